"""One training run: `train_and_evaluate(config) -> summary`, its three phases in order.

1. `setup.set_up_together`: data, schedule, optimizer, devices, the run folder, and the initial state or the
   one restored from the newest checkpoint (--resume), agreed by every process of a multi-process run.
2. `loop.train`: the run as a group of one configuration, trained in compiled chunks to --epochs (logging,
   evaluating and checkpointing between chunks), as a sweep trains its groups.
3. `finish.finish`: sample with the chosen parameters, evaluate, draw the pictures, write the summary.
"""

from __future__ import annotations

from typing import Optional

from ddpm_harness.config import Config
from ddpm_harness.runs import release_run_dir
from jax_ddpm.runner import distributed
from jax_ddpm.runner.finish import finish, start_pictures
from jax_ddpm.runner.loop import RunProgress, group_of_one, train
from jax_ddpm.runner.setup import RunWriteError, set_up_together, write_failure_message


def train_and_evaluate(config: Config, imports_s: Optional[float] = None) -> dict:
    """Train (or resume) a run, write its outputs and return its summary (also in summary.json).
    `imports_s`, the command line's import time, joins the summary's time breakdown. In a multi-process run
    (`distributed.join` first), every process calls it; process 0 writes the folder."""
    run = set_up_together(config)
    if imports_s is not None:
        run.timings = {"imports": imports_s, **run.timings}
    pictures = None
    try:
        pictures = None if config.no_plots or not run.writes else start_pictures(run)
        with distributed.told_on_failure():  # the other processes of a multi-process run stop too
            trained = train(group_of_one(run), RunProgress(run))
            run.timings.update(trained.timings())
            summary = finish(run, trained, pictures)
        distributed.meet("at the end", config.distributed_timeout)
        return summary
    except OSError as err:  # disk full, folder made read-only, ...: say what is kept and what to do
        raise RunWriteError(write_failure_message(run, err)) from None
    finally:
        if pictures is not None:
            pictures.join()  # never leave a thread writing into a folder we release
        release_run_dir(run.run_dir)
