"""The tutorial's pictures, drawn from numpy arrays (so both the JAX and the PyTorch CLI use them).

Static pictures use matplotlib (Agg backend) in the tutorial's style: dark background, white points
with grey edges. The GIF's 200 frames are rasterised directly with numpy (a grey disc with a white
core per point) instead of one matplotlib savefig per frame, which would take most of a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

DPI = 72
POINT_STYLE = dict(color="white", edgecolor="gray", s=5)


def _scatter_row(
    panels: Sequence[tuple[str, np.ndarray]], path: Path, panel_size: tuple[float, float], **scatter
) -> None:
    """One row of scatter plots, titled, axes off, dark background."""
    with plt.style.context("dark_background"):
        fig, axs = plt.subplots(1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]))
        for ax, (title, points) in zip(np.atleast_1d(axs), panels):
            ax.scatter(points[:, 0], points[:, 1], **{**POINT_STYLE, **scatter})
            ax.set_axis_off()
            ax.set_title(title)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)


def plot_datasets(datasets: dict[str, np.ndarray], path: Path) -> None:
    """data.png: the tutorial's datasets side by side (name -> (N, 2) points)."""
    _scatter_row([(name.replace("_", " "), x) for name, x in datasets.items()], path, (5, 5), alpha=0.5)


def plot_guidance(rows: dict[float, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path) -> None:
    """guidance.png: one row per guidance weight w, one column per dataset, samples coloured by class.
    rows: w -> {dataset name -> (points (N, 2), labels (N,))}; every row has the same datasets."""
    names = list(next(iter(rows.values())))
    colours = plt.get_cmap("tab10")
    with plt.style.context("dark_background"):
        fig, axs = plt.subplots(
            len(rows),
            len(names),
            figsize=(3.2 * len(names), 3.2 * len(rows)),
            squeeze=False,
            sharex="col",
            sharey="col",
        )
        for axs_row, (w, panels) in zip(axs, rows.items()):
            for ax, name in zip(axs_row, names):
                points, labels = panels[name]
                ax.scatter(points[:, 0], points[:, 1], c=colours(np.asarray(labels) % 10), s=3, alpha=0.6, linewidths=0)
                ax.set_axis_off()
                ax.set_title(f"{name.replace('_', ' ')}, w = {w:g}")
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)


def forward_steps(num_steps: int) -> list[int]:
    """The ten forward steps the tutorial shows: t = 0, 10, ..., 90 for T = 100."""
    return [i * num_steps // 10 for i in range(10)]


def plot_forward(frames: Sequence[tuple[int | str, np.ndarray]], path: Path) -> None:
    """forward.png: samples of q(x_t | x_0) for the given (t, points) pairs (t a step, or a flow's time)."""
    _scatter_row([(f"$q(\\mathbf{{x}}_{{{t}}})$", x) for t, x in frames], path, (2.8, 3))


def reverse_states(num_steps: int) -> list[int]:
    """The ten reverse-chain states the tutorial shows: 10, 20, ..., 100 for T = 100 (every state
    after x_T for a chain of fewer than ten steps)."""
    return sorted({(i + 1) * num_steps // 10 for i in range(10)} - {0})


def plot_reverse(x_seq: np.ndarray, path: Path, state_steps: Sequence[int] | None = None) -> None:
    """reverse.png: states 10, 20, ..., T of the chain x_seq (T + 1, n, 2).

    x_seq[0] is x_T and each reverse step lowers t by one, so state k is x_{T-k}: state 10 is
    x_90 and state 100 the sample x_0. (The tutorial titles them q(x_100), q(x_200), ...: a slip.)
    A sampler that skips steps passes `state_steps`, the t of each of its S + 1 states.
    """
    num_steps = x_seq.shape[0] - 1
    steps = list(state_steps) if state_steps is not None else [num_steps - k for k in range(num_steps + 1)]
    _scatter_row([(f"$p(\\mathbf{{x}}_{{{steps[k]}}})$", x_seq[k]) for k in reverse_states(num_steps)], path, (2.8, 3))


def plot_loss(records: Sequence[dict], path: Path) -> None:
    """loss.png: mean epoch loss (and the noisier last-batch loss) against the epoch, per seed."""
    epochs = np.array([r["epoch"] for r in records])
    mean = np.array([np.atleast_1d(r["loss"]) for r in records])  # (E, seeds)
    last = np.array([np.atleast_1d(r["last_loss"]) for r in records])
    with plt.style.context("dark_background"):
        fig, ax = plt.subplots(figsize=(7, 4))
        for s in range(mean.shape[1]):
            label = "" if mean.shape[1] == 1 else f" (seed +{s})"
            ax.plot(epochs, last[:, s], color="gray", alpha=0.5, lw=0.8, label="last-batch loss" + label)
            ax.plot(epochs, mean[:, s], lw=1.5, label="mean epoch loss" + label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.legend(loc="upper right", fontsize=8)
        fig.savefig(path, dpi=DPI * 1.5, bbox_inches="tight")
        plt.close(fig)


# Pixel offsets of a point's grey edge (its four neighbours) and white core (one pixel): small,
# like the tutorial's s=5 markers, so 10,000 points keep their texture instead of merging.
_EDGE = [(-1, 0), (1, 0), (0, -1), (0, 1)]
_CORE = [(0, 0)]


def frame_limits(frames: np.ndarray, margin: float = 0.1) -> tuple[float, float, float]:
    """A square window (centre x, centre y, half width) holding 99% of every frame's points."""
    lo = np.percentile(frames.reshape(-1, 2), 0.5, axis=0)  # frames: (..., 2)
    hi = np.percentile(frames.reshape(-1, 2), 99.5, axis=0)
    centre = (lo + hi) / 2
    half = float(np.max(hi - lo)) / 2 * (1 + margin)
    return float(centre[0]), float(centre[1]), half


def class_colours(labels: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 RGB of each point's class: matplotlib's tab10, as `plot_guidance` colours them."""
    return np.round(np.asarray(plt.get_cmap("tab10")(np.asarray(labels) % 10))[:, :3] * 255).astype(np.uint8)


def rasterize(
    points: np.ndarray, limits: tuple[float, float, float], size: int, colours: np.ndarray | None = None
) -> np.ndarray:
    """Draw points (n, 2) as grey-edged white dots on black: a (size, size) uint8 image, y up; with
    `colours` (n, 3) uint8, dots of those colours with darker edges: a (size, size, 3) RGB image."""
    cx, cy, half = limits
    col = np.round((points[:, 0] - cx + half) / (2 * half) * (size - 1)).astype(np.int64)
    row = np.round((cy + half - points[:, 1]) / (2 * half) * (size - 1)).astype(np.int64)
    if colours is None:
        image, edge, core = np.zeros((size, size), np.uint8), np.full(len(points), 110), np.full(len(points), 255)
    else:
        image, edge, core = np.zeros((size, size, 3), np.uint8), colours // 2, colours
    for offsets, value in ((_EDGE, edge), (_CORE, core)):
        for dy, dx in offsets:
            r, c = row + dy, col + dx
            inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
            image[r[inside], c[inside]] = value[inside]
    return image


def write_gif(
    forward: np.ndarray,
    reverse: np.ndarray,
    path: Path,
    size: int = 256,
    frame_ms: int = 100,
    reverse_steps: Sequence[int] | None = None,
    classes: tuple[np.ndarray, np.ndarray] | None = None,
    forward_times: Sequence[str] | None = None,
) -> None:
    """diffusion.gif: forward frames (F, n, 2) then reverse frames (R, n, 2), looping forever.

    Frame i of `forward` is labelled q(x_i); frame j of `reverse` is the chain state j + 1, that is
    x_{R-1-j} (the caller passes x_seq[1:], so the last frame is the sample x_0). `classes`, a
    class-conditional run's (the class of each forward point, of each reverse point): dots coloured by class.
    """
    limits = frame_limits(np.concatenate([forward.reshape(-1, 2), reverse.reshape(-1, 2)]))
    steps = list(reverse_steps) if reverse_steps is not None else [len(reverse) - 1 - j for j in range(len(reverse))]
    labels = [f"q(x_{t})" for t in forward_times or range(len(forward))] + [f"p: x_{t}" for t in steps]
    colours = [None, None] if classes is None else [class_colours(c) for c in classes]
    frame_colours = [colours[0]] * len(forward) + [colours[1]] * len(reverse)
    frames = []
    for points, label, colour in zip(list(forward) + list(reverse), labels, frame_colours):
        image = Image.fromarray(rasterize(points, limits, size, colour), mode="L" if colour is None else "RGB")
        ImageDraw.Draw(image).text((4, 2), label, fill=200 if colour is None else (200, 200, 200))
        frames.append(image)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)


def draw_setup_pictures(
    run_dir: Path, datasets: dict[str, np.ndarray], forward: np.ndarray, forward_times: Sequence[str] | None = None
) -> None:
    """The pictures known before training: data.png and forward.png (forward: (T, N, 2) samples of
    q(x_t | x_0) for t = 0 .. T-1; or a flow's path, frame k labelled `forward_times[k]`, its time)."""
    run_dir = Path(run_dir)
    plot_datasets(datasets, run_dir / "data.png")
    times = forward_times or list(range(forward.shape[0]))
    plot_forward([(times[k], forward[k]) for k in forward_steps(forward.shape[0])], run_dir / "forward.png")


def draw_result_pictures(
    run_dir: Path,
    forward: np.ndarray,
    x_seq: np.ndarray,
    records: Sequence[dict],
    state_steps: Sequence[int] | None = None,
    classes=None,
    forward_times: Sequence[str] | None = None,
) -> None:
    """The pictures of a trained model: reverse.png, loss.png and diffusion.gif (x_seq (S + 1, n, 2):
    one reverse chain, x_T first; state_steps, the t of each state when the sampler skips steps;
    default: S = T steps, state k is x_{T-k}). `classes` (`pictures.ClassPictures`), a class-conditional
    run's: the GIF coloured by class, and guidance.png."""
    run_dir = Path(run_dir)
    plot_reverse(x_seq, run_dir / "reverse.png", state_steps)
    plot_loss(records, run_dir / "loss.png")
    # Forward frames q(x_0) .. q(x_{T-1}), then chain states 1 .. S (the last is x_0): it ends on the sample.
    reverse_steps = None if state_steps is None else list(state_steps)[1:]
    gif_classes = None if classes is None else (classes.data_labels, classes.sample_labels)
    gif = dict(reverse_steps=reverse_steps, classes=gif_classes, forward_times=forward_times)
    write_gif(forward, x_seq[1:], run_dir / "diffusion.gif", **gif)
    if classes is not None:
        plot_guidance({w: {classes.dataset: drawn} for w, drawn in classes.guidance.items()}, run_dir / "guidance.png")


def draw_run_pictures(
    run_dir: Path,
    datasets: dict[str, np.ndarray],
    forward: np.ndarray,
    x_seq: np.ndarray,
    records: Sequence[dict],
    state_steps: Sequence[int] | None = None,
) -> None:
    """All pictures of a run: data.png, forward.png, reverse.png, loss.png and diffusion.gif."""
    draw_setup_pictures(run_dir, datasets, forward)
    draw_result_pictures(run_dir, forward, x_seq, records, state_steps)
