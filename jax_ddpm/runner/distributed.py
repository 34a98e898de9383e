"""Many processes (hosts) in one run, through JAX's own distributed runtime (`jax.distributed`).

What each piece does (docs/distributed.md tells the whole story):

1. Joining: `join(config)` calls `jax.distributed.initialize` before any JAX computation, with
   --coordinator-address, --num-processes and --process-id, or with no arguments under a launcher that JAX reads
   (SLURM's srun, Open MPI's mpirun) when it started several tasks. A watchdog bounds the wait: a coordinator
   that cannot be reached, or processes that never come, give one `error:` line and exit status 1 after
   --distributed-timeout seconds (JAX's own timeout aborts the process with a C++ stack trace instead).
2. One model over every process's devices (--devices = all devices of all processes): `make_mesh`'s mesh spans
   the processes. Every process holds the whole dataset (a few hundred KB) and draws the same permutation and
   noise from the same keys; the batch's sharding constraint hands each device its rows. So the global batch is
   the one a single process would train on, each process computes the gradient of its rows, and XLA all-reduces
   the gradients across processes (on CPU with gloo, JAX's default `jax_cpu_collectives_implementation`).
   Parameters are replicated: every process holds the whole state, and the metrics are the same everywhere.
3. Writing: process 0 alone writes the run folder. It checkpoints its own copy of the replicated state with orbax
   told that it is the only process taking part (`ProcessZeroCheckpointer`); the others hold a `NoCheckpointer`
   and a `NoMetricsLog`, and print nothing on stdout (their lines would repeat process 0's).
4. Agreeing: the processes meet (`meet`) after the set-up, after each chunk's writes and at the end; each posts
   "ok", or its error line (`told_on_failure`), in the coordinator's key-value store and reads everyone's. When one
   process fails (say process 0's --out-dir exists, or its disk fills), every process stops with one line instead
   of waiting in a collective for a process that has gone. After the set-up, process 0 also shares its run folder
   and, on --resume, its restored state (broadcast bit for bit). A process that dies outright: the others stop at
   once with one line (`exit_at_once_if_a_process_is_lost`), or JAX aborts them when process 0, the coordinator,
   is the one that died.
5. Sweeps split across processes need none of this: their processes train different models and never talk.
   Each learns its id and the count from the same options or from srun / mpirun (`plan_launch`, without joining),
   takes its share of the configurations (`process_share`, round-robin) and writes into a shared folder; process 0
   waits for the others' rows (`wait_for_files`) and merges them. Joining would even get in the way: orbax writes
   from process 0 only once several processes have joined (see `ProcessZeroCheckpointer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Optional, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax._src import distributed as jax_distributed  # the coordinator's key-value store (as multihost_utils uses)
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ddpm_harness.config import Config, ConfigError
from ddpm_harness.runs import MetricsLog, default_run_dir, open_run_dir, release_run_dir, write_config
from jax_ddpm.runner.checkpoint import Checkpointer, CheckpointError

T = TypeVar("T")
KEY_PREFIX = "jax_ddpm"  # keys this program puts in the coordinator's key-value store
# JAX's own join timeout is set this much past the watchdog's, so the watchdog's one line always comes first.
JAX_TIMEOUT_MARGIN_S = 60

# The launchers JAX reads in `jax.distributed.initialize()` (jax/_src/clusters/slurm_cluster.py and
# ompi_cluster.py in jax 0.10.2): the variables that must all be set, and the one holding the task count and rank.
CLUSTERS = {
    "slurm": (
        ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
        "SLURM_NTASKS",
        "SLURM_PROCID",
    ),
    "ompi": (
        ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
    ),
}


class DistributedError(RuntimeError):
    """A multi-process run that cannot go on; the message names the process and what to do. `lost` when another
    process stopped answering (died, or hangs), rather than stopping with an error of its own."""

    def __init__(self, message: str, lost: bool = False):
        super().__init__(message)
        self.lost = lost


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process takes part in a run; `source` is "single", "options", "slurm" or "ompi"."""

    num_processes: int
    process_id: int
    coordinator_address: Optional[str]
    source: str

    @property
    def multi(self) -> bool:
        return self.num_processes > 1


def detect_cluster(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """ "slurm" or "ompi" when that launcher started this process as one of several tasks, else None."""
    for name, (needed, count, _) in CLUSTERS.items():
        if all(v in environ for v in needed) and environ[count].isdigit() and int(environ[count]) > 1:
            return name
    return None


def plan_launch(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    environ: Mapping[str, str] = os.environ,
) -> Launch:
    """What `initialize` will do, from the options and the environment (no JAX call).

    --num-processes 1 is one process. Under srun / mpirun with several tasks, the launcher's variables fill the
    options not given. Otherwise any of the three options asks for several processes, and all three must be known
    ($JAX_COORDINATOR_ADDRESS stands for --coordinator-address); raises ConfigError naming the missing ones.
    """
    if num_processes == 1:
        return Launch(1, 0, None, "single")
    cluster = detect_cluster(environ)
    if cluster is not None:
        _, count, rank = CLUSTERS[cluster]
        return Launch(
            num_processes or int(environ[count]),
            int(environ[rank]) if process_id is None else process_id,
            coordinator_address,
            cluster,
        )
    if coordinator_address is None and num_processes is None and process_id is None:
        return Launch(1, 0, None, "single")
    address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")
    missing = [
        name
        for name, value in (
            ("--coordinator-address", address),
            ("--num-processes", num_processes),
            ("--process-id", process_id),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(
            f"a run over several processes needs {' and '.join(missing)} too: give every process the "
            "same --coordinator-address HOST:PORT (process 0's) and --num-processes, and its own "
            "--process-id; or launch it with srun or mpirun, which set them"
        )
    return Launch(num_processes, process_id, address, "options")


def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    timeout_s: int = 300,
) -> Launch:
    """Join the other processes of the run (`jax.distributed.initialize`), or do nothing for one process.

    Call it before any JAX computation. Gives up after `timeout_s` seconds with one `error:` line on stderr and exit
    status 1: JAX itself would abort with a C++ stack trace once its own timeout passed.
    """
    launch = plan_launch(coordinator_address, num_processes, process_id)
    if not launch.multi or jax.distributed.is_initialized():
        return launch
    joined = threading.Event()

    def give_up() -> None:
        if joined.wait(timeout_s):
            return
        where = launch.coordinator_address or f"the address {launch.source} gives"
        if launch.process_id == 0:
            why = (
                f"waited {timeout_s} s at {where} for the other {launch.num_processes - 1} process(es) to join; "
                f"start all {launch.num_processes} with the same --coordinator-address and --num-processes"
            )
        else:
            why = (
                f"could not join the coordinator at {where} within {timeout_s} s: start process 0 (it hosts the "
                f"coordinator) and all {launch.num_processes} processes, and check the address and its port"
            )
        print(
            f"error: process {launch.process_id} of {launch.num_processes} {why}, or raise --distributed-timeout",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)  # nothing is written before joining; JAX's connect cannot be interrupted otherwise

    threading.Thread(target=give_up, name="jax_ddpm-join-timeout", daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=launch.coordinator_address,
            num_processes=None if launch.source in CLUSTERS and num_processes is None else launch.num_processes,
            process_id=None if launch.source in CLUSTERS and process_id is None else launch.process_id,
            cluster_detection_method=launch.source if launch.source in CLUSTERS else "deactivate",
            initialization_timeout=timeout_s + JAX_TIMEOUT_MARGIN_S,
            shutdown_timeout_seconds=timeout_s,  # at exit, wait this long at most for the other processes
        )
    except (RuntimeError, ValueError, TypeError) as err:
        raise DistributedError(f"process {launch.process_id} could not join the run: {_first_line(err)}") from None
    finally:
        joined.set()
    return Launch(
        jax.process_count(), jax.process_index(), jax_distributed.global_state.coordinator_address, launch.source
    )


def join(config: Config) -> Launch:
    """`initialize` with a training Config's options, then check that the run fits the processes: --devices counts
    every device of every process, and one model is trained (--seeds 1). The options on their own were checked
    when the command line was parsed (`ddpm_harness.cli.door`)."""
    launch = initialize(config.coordinator_address, config.num_processes, config.process_id, config.distributed_timeout)
    if launch.multi:
        total = jax.device_count()
        if config.seeds > 1:
            raise ConfigError(
                f"--seeds {config.seeds} over {launch.num_processes} processes is not supported: "
                "train one model per run over several processes, or split seeds across processes "
                "with python -m jax_ddpm.sweep"
            )
        if config.devices != total:
            raise ConfigError(
                f"--devices {config.devices}: the {launch.num_processes} processes hold {total} "
                f"devices ({jax.local_device_count()} in this one); give --devices {total}, as every "
                "process takes part in each step"
            )
    return launch


def is_process_zero() -> bool:
    """True on process 0 of a multi-process run and in a single-process run: the process that writes."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


@contextlib.contextmanager
def stdout_of_process_zero() -> Iterator[None]:
    """Let only process 0 print on stdout (other processes would repeat its lines); stderr is left alone."""
    if is_process_zero():
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


# ---- process 0 writes; the others hold stand-ins -------------------------------------------------------


def local_copy(tree):
    """This process's copy of a replicated pytree: each global array's first local shard (the whole array)."""

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"an array of shape {x.shape} is split across processes; no process holds it whole")
            return x.addressable_shards[0].data
        return x

    return jax.tree.map(local, tree)


class ProcessZeroCheckpointer(Checkpointer):
    """Process 0's checkpoints of a model trained over several processes: its own copy of the replicated state.

    orbax is told that process 0 alone takes part (`active_processes`), so no orbax barrier waits for processes
    that write nothing. The state is saved as numpy arrays: orbax refuses single-device jax.Arrays once several
    processes exist, and writes numpy arrays from process 0 only (orbax 0.12.8), which is why no other process can
    checkpoint on its own in a joined run. The files are those of a single-process run: `restore_run` and
    `python -m jax_ddpm.sample` read them in one process.
    """

    def _make_manager(self) -> ocp.CheckpointManager:
        self.directory.mkdir(parents=True, exist_ok=True)  # orbax creates no folder for a subset of the processes
        options = ocp.CheckpointManagerOptions(
            max_to_keep=2,
            enable_async_checkpointing=False,
            create=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0}),
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def save(self, state, **record) -> None:
        super().save(host_copy(state), **record)

    def restore(self, template, config: Config, set_aside: bool = True):
        return super().restore(host_copy(template), config, set_aside)


def host_copy(tree):
    """This process's copy of a replicated pytree as numpy arrays."""
    return jax.tree.map(np.asarray, local_copy(tree))


class NoCheckpointer:
    """What processes other than 0 hold in place of a Checkpointer: they write nothing, and follow the epoch of
    process 0's newest checkpoint (written at the same epochs) for their messages."""

    def __init__(self, directory: Path, latest: Optional[int] = None):
        self.directory, self.latest = directory, latest

    def latest_epoch(self) -> Optional[int]:
        return self.latest

    def has(self, epoch: int) -> bool:
        return False  # process 0 decides whether to write; this process follows with `save`

    def save(self, state, *, epoch: int, **record) -> None:
        self.latest = int(epoch)

    def restore(self, template, config: Config, set_aside: bool = True):
        raise CheckpointError("only process 0 reads checkpoints; it shares the restored state")

    def close(self) -> None:
        pass


class NoMetricsLog:
    """What processes other than 0 hold in place of a MetricsLog: the same calls, nothing written."""

    def truncate_after(self, epoch: int) -> list[dict]:
        return []

    def read(self) -> list[dict]:
        return []

    def append(self, records) -> None:
        pass


def open_outputs(config: Config) -> tuple[Path, object, object, bool]:
    """(run folder, checkpointer, metrics log, writes) of this process: process 0 (or the only process) opens and
    locks the folder; the others get stand-ins and the path to name in messages (process 0's, once agreed)."""
    if not is_process_zero():
        run_dir = Path(config.out_dir) if config.out_dir else default_run_dir(config)
        return run_dir, NoCheckpointer(Path(run_dir) / "checkpoints"), NoMetricsLog(), False
    run_dir = open_run_dir(config)
    try:
        if not config.resume:  # first of all, so a folder without it holds no results (runs.BEFORE_CONFIG);
            # a resumed run's config.json is replaced only once it has succeeded (finish)
            write_config(run_dir, config, framework="jax")
        checkpointer = (ProcessZeroCheckpointer if jax.process_count() > 1 else Checkpointer)(run_dir)
    except BaseException:
        release_run_dir(run_dir)
        raise
    return run_dir, checkpointer, MetricsLog(run_dir), True


# ---- agreeing across processes ------------------------------------------------------------------------
#
# The processes meet at numbered points (`meet`): after the set-up, after each chunk's writes, at the end. Each
# posts "ok" (or, from `told_on_failure`, its error line) under the number of the next point in the coordinator's
# key-value store, and reads everyone's. Every process passes the same points in the same order (they run the same
# program), so a process that fails posts its error exactly where the others will look: they stop with one line
# before entering a collective that would wait for the failed process forever.

_points_passed = 0  # meeting points this process has passed


def _client():
    return jax_distributed.global_state.client


def _post(key: str, value: dict) -> None:
    _client().key_value_set(f"{KEY_PREFIX}/{key}", json.dumps(value))


def _read(key: str, timeout_s: float, waiting_for: str) -> dict:
    try:
        return json.loads(_client().blocking_key_value_get(f"{KEY_PREFIX}/{key}", int(timeout_s * 1000)))
    except Exception as err:  # jax.errors.JaxRuntimeError: DEADLINE_EXCEEDED, or the coordinator went away
        raise DistributedError(
            f"process {jax.process_index()} of {jax.process_count()} waited {timeout_s:g} s for "
            f"{waiting_for} ({_first_line(err)}); if it is only slow, raise --distributed-timeout",
            lost=True,
        ) from None


def meet(what: str, timeout_s: float, payload=None) -> list:
    """Wait until every process has reached this point (`what` names it in messages); the payloads every process
    posted (JSON-able), in process order. Raises DistributedError naming the first process that failed instead.
    A no-op returning [payload] in a single-process run."""
    global _points_passed
    if not jax.distributed.is_initialized():
        return [payload]
    point = f"point-{_points_passed}"
    _post(f"{point}/{jax.process_index()}", {"ok": payload})
    outcomes = [_read(f"{point}/{i}", timeout_s, f"process {i} {what}") for i in range(jax.process_count())]
    failed = [(i, o["error"]) for i, o in enumerate(outcomes) if "error" in o]
    if failed:
        i, message = failed[0]
        raise DistributedError(f"process {i} of {jax.process_count()} stopped {what}: {message}")
    _points_passed += 1
    return [o["ok"] for o in outcomes]


@contextlib.contextmanager
def told_on_failure() -> Iterator[None]:
    """On an error in this process, post it where the other processes meet next, then let it propagate."""
    try:
        yield
    except DistributedError:
        raise  # another process failed: it has told everyone
    except BaseException as err:
        if jax.distributed.is_initialized():
            with contextlib.suppress(Exception):  # the coordinator may be gone already
                _post(f"point-{_points_passed}/{jax.process_index()}", {"error": _first_line(err, with_type=False)})
        raise


@contextlib.contextmanager
def exit_at_once_if_a_process_is_lost(launch: Launch) -> Iterator[None]:
    """In a multi-process run, a process that lost another (a collective failed, say gloo's "connection reset by
    peer", or a meeting timed out) prints one line and exits with status 1 at once: JAX's own exit would wait
    --distributed-timeout at its shutdown barrier for the lost process, then abort with a C++ stack trace."""
    try:
        yield
    except (DistributedError, jax.errors.JaxRuntimeError) as err:
        if not launch.multi or (isinstance(err, DistributedError) and not err.lost):
            raise
        message = (
            str(err)
            if isinstance(err, DistributedError)
            else (
                f"process {launch.process_id} of {launch.num_processes} lost another process "
                f"({_first_line(err, with_type=False)}); see the other processes' output for the reason"
            )
        )
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)


def share_set_up(run, timeout_s: float) -> None:
    """After every process set up its run (inside `told_on_failure`), agree: if any process failed, every process
    stops with one line. A no-op in a single-process run.

    The other processes take process 0's run folder, start epoch, wall time and newest metrics record from `run`
    (which has run_dir, checkpointer, records, start_epoch, wall_before, state and mesh), and on --resume its
    restored state. On failure this process's run folder is released.
    """
    if not jax.distributed.is_initialized():
        return
    try:
        shared = (
            dict(
                run_dir=str(run.run_dir),
                start_epoch=run.start_epoch,
                wall_before=run.wall_before,
                latest=run.checkpointer.latest_epoch(),
                records=run.records[-1:],
            )
            if is_process_zero()
            else None
        )
        zero = meet("while setting up", timeout_s, shared)[0]
        if not is_process_zero():  # process 0's folder and where it resumes (the newest record, for the summary)
            run.run_dir, run.start_epoch = Path(zero["run_dir"]), zero["start_epoch"]
            run.wall_before, run.records = zero["wall_before"], zero["records"]
            run.checkpointer = NoCheckpointer(run.run_dir / "checkpoints", zero["latest"])
        if zero["start_epoch"] > 0:  # process 0 resumed: every process continues from its state
            run.state = replicate(broadcast_from_zero(local_copy(run.state)), run.mesh)
    except BaseException:
        release_run_dir(run.run_dir)
        raise


def broadcast_from_zero(tree):
    """Process 0's values of a pytree of arrays (the same shapes on every process), bit for bit, on every process:
    each leaf travels as unsigned integers of its width, so the sum that broadcasts it adds only zeros."""

    def as_bits(x):
        x = np.asarray(x)
        return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))

    bits = multihost_utils.broadcast_one_to_all(jax.tree.map(as_bits, tree))
    return jax.tree.map(lambda b, x: np.asarray(b).view(np.asarray(x).dtype), bits, tree)


def replicate(tree, mesh):
    """A pytree of host arrays (the same on every process) as global arrays replicated over `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


# ---- sweeps split across processes -------------------------------------------------------------------


def process_share(items: Sequence[T], process_id: int, num_processes: int) -> list[T]:
    """The items process `process_id` of `num_processes` takes, round-robin: items process_id,
    process_id + num_processes, ...; the shares of all processes are disjoint and cover the items."""
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must lie in 0 .. num_processes - 1, got {process_id} of {num_processes}")
    return list(items)[process_id::num_processes]


def wait_for_files(paths: Sequence[os.PathLike | str], timeout_s: float, poll_s: float = 0.5) -> list[Path]:
    """Wait until every path exists (written atomically by another process: existing means complete); the paths.

    Raises DistributedError naming the missing ones after `timeout_s` seconds. The writers and process 0 must see
    the same folder (a shared file system).
    """
    paths = [Path(p) for p in paths]
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return paths
        if time.monotonic() >= deadline:
            shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise DistributedError(
                f"{len(missing)} of {len(paths)} files did not appear within {timeout_s:g} s "
                f"({shown}); did a process stop? its rows can be merged later"
            )
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))


def _first_line(err: BaseException, with_type: bool = True) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0][:300] if lines else ""
    if not with_type:
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
