"""How much of each twin pair reads the same: `python -m parity_tests.twin_lines`.

For each pair torch_reference/X.py / jax_ddpm/X.py, both files are reduced to their non-blank lines with
leading and trailing whitespace stripped (so indentation and blank lines do not count), and the shared lines
are those difflib.SequenceMatcher (autojunk off) matches between the two sequences: lines equal in text and
in order, as `diff` would leave them out. Printed: shared lines out of each file's counted lines.
"""

from __future__ import annotations

import difflib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ("schedule", "model", "losses", "sampling", "training")


def counted_lines(path: Path) -> list[str]:
    """The non-blank lines of `path`, stripped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def shared_lines(name: str) -> tuple[int, int, int]:
    """(shared, torch lines, jax lines) of the pair torch_reference/name.py, jax_ddpm/name.py."""
    ref = counted_lines(ROOT / "torch_reference" / f"{name}.py")
    ans = counted_lines(ROOT / "jax_ddpm" / f"{name}.py")
    matcher = difflib.SequenceMatcher(None, ref, ans, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()), len(ref), len(ans)


def main() -> None:
    print(f"{'pair':<10} {'shared':>6} {'torch lines':>12} {'jax lines':>10}  (stripped, non-blank; difflib)")
    for name in PAIRS:
        shared, n_ref, n_ans = shared_lines(name)
        print(
            f"{name:<10} {shared:>6} {n_ref:>12} {n_ans:>10}   "
            f"{shared / n_ref:4.0%} of torch, {shared / n_ans:4.0%} of jax"
        )


if __name__ == "__main__":
    main()
