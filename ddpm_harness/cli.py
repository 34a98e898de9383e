"""What every command line of the project shares: parsing with tyro, and bad input as one line.

A known error (bad option, bad data, unusable run folder or checkpoint, diverged training) becomes
one line on stderr, `error: <what and what to do>`, and exit status 2 for usage errors or 1 for
runtime errors; never a traceback. tyro's own boxed messages are folded into that one line too.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Callable, Sequence, Type, TypeVar

import tyro

from ddpm_harness.config import Config, resolve_preset, validate
from ddpm_harness.memory import check_fits_in_memory

T = TypeVar("T")
RULE_CHARS = "╭╮╰╯│─-+| "


def fold_box(text: str) -> str:
    """The message inside tyro's error box, as one line ("" when there is none).

    rich draws the box in Unicode, or, when the output cannot take it (stdout redirected to a
    StringIO, LANG=C), as a bare title line with rules of dashes; both are read.
    """
    words = []
    for line in text.splitlines()[1:]:  # the first line is the box's title bar
        body = line.strip().strip("│|").strip()
        if not body.strip(RULE_CHARS):  # a blank line or a rule: the message ends (helptext follows)
            if words:
                break
            continue  # the rule under a bare title
        words.append(body)
    return " ".join(words)


def one_line(text: str) -> str:
    """text with every non-printable character (newline, escape, unassigned code point) escaped, so a
    message that quotes the user's input stays one readable line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def report(message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)


def parse(cls: Type[T], argv: Sequence[str] | None, prog: str) -> T:
    """tyro.cli(cls) on argv; a parse error exits 2 with one stderr line (--help prints as usual)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, args=argv, prog=prog)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            message = fold_box(captured.getvalue()) or "invalid arguments"
            report(f"{message} (see {prog} --help)")
        raise


def door(config: Config, argv: Sequence[str] | None) -> Config:
    """A training command line's Config as parsed, completed and checked before anything runs (no process
    joins, no file is written, nothing compiles before it): its --preset applied, then `config.validate`
    (the sampling options included, `SamplerOptions`) and the memory budget. Everything after trusts it."""
    config = validate(resolve_preset(config, argv))
    check_fits_in_memory(config)
    return config


def run(
    cls: Type[T],
    argv: Sequence[str] | None,
    prog: str,
    body: Callable[[T], object],
    usage_errors: tuple[type, ...],
    runtime_errors: tuple[type, ...],
    resolve: Callable[[T, Sequence[str]], T] | None = None,
) -> int:
    """Parse argv into `cls`, call `body` on it; the process exit status.

    `resolve(args, argv)`, when given, completes the parsed arguments first (e.g.
    `config.resolve_preset`, which needs to know which options the command line named). The known
    errors become one stderr line: exit 2 for parse errors and `usage_errors`, 1 for
    `runtime_errors` (usage is checked first, so a usage error may subclass a runtime one).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    nul = next((arg for arg in argv or () if "\x00" in arg), None)  # only in process: a real argv cannot hold one
    if nul is not None:
        report(f"argument {nul!r} holds a NUL byte, which no path or number can hold (see {prog} --help)")
        return 2
    try:
        args = parse(cls, argv, prog)
    except SystemExit as exit_:  # --help (0) or a parse error (2, already reported)
        return exit_.code or 0
    try:
        if resolve is not None:
            args = resolve(args, argv)
        body(args)
    except usage_errors as err:
        report(str(err))
        return 2
    except runtime_errors as err:
        report(str(err))
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; continue with --resume and the same --out-dir", file=sys.stderr)
        return 130
    return 0
