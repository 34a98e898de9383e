"""A run's pictures drawn on a background thread (`Pictures`), from numpy arrays: framework-free.

data.png and forward.png are drawn while the main thread compiles and trains, reverse.png, loss.png
and the GIF while it evaluates. A single model's compiled steps run on one core, so the other one
draws. `ddpm_harness.plots` (matplotlib, among the slowest imports) is imported on the thread.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassPictures:
    """What a class-conditional run (--conditional) adds to its pictures: the GIF's dots coloured by class,
    and guidance.png (one row per guidance weight w, samples of every class coloured by class)."""

    dataset: str  # the column's title
    data_labels: np.ndarray  # (N,) the class of each point of the forward frames
    sample_labels: np.ndarray  # (n,) the class of each point of the reverse chain
    guidance: dict  # w -> (points (m, 2), labels (m,)), the same x_T at every w


class Pictures:
    """Draw a run's pictures into `run_dir` on a thread: data.png (`datasets`, name -> (N, 2)) and
    forward.png (`forward`, (T, N, 2) samples of q(x_t | x_0) in data units; a flow run's path, frame k
    labelled by its time `forward_times[k]`) at once, the results' pictures with `draw_results`. An error
    (a full disk) is raised by `wait`."""

    def __init__(
        self,
        run_dir: Path,
        datasets: dict[str, np.ndarray],
        forward: np.ndarray,
        forward_times: Optional[list[str]] = None,
    ):
        self.run_dir, self.forward, self.forward_times = Path(run_dir), forward, forward_times
        self._error: Optional[BaseException] = None
        run_dir = self.run_dir

        def draw_setup():
            from ddpm_harness.plots import draw_setup_pictures

            draw_setup_pictures(run_dir, datasets, forward, forward_times)

        self._thread = self._start(draw_setup)

    def _start(self, target) -> threading.Thread:
        def guarded():
            try:
                target()
            except BaseException as err:  # re-raised on the main thread by wait()
                self._error = err

        thread = threading.Thread(target=guarded, name="pictures", daemon=True)
        thread.start()
        return thread

    def draw_results(
        self,
        x_seq: np.ndarray,
        records: list[dict],
        steps: Optional[list[int]] = None,
        classes: Optional[ClassPictures] = None,
    ) -> None:
        """Start reverse.png, loss.png and diffusion.gif once data.png and forward.png are done (x_seq
        (S + 1, n, 2): one reverse chain, x_T first; steps: the t of each state when the sampler skips steps;
        classes: a class-conditional run's, with guidance.png)."""
        self.wait()
        run_dir, forward, forward_times = self.run_dir, self.forward, self.forward_times

        def draw_results():
            from ddpm_harness.plots import draw_result_pictures

            draw_result_pictures(run_dir, forward, x_seq, records, steps, classes, forward_times)

        self._thread = self._start(draw_results)

    def join(self) -> None:
        """Wait for the drawing in progress, keeping any error for `wait`."""
        self._thread.join()

    def wait(self) -> None:
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
