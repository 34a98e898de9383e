"""`python -m benchmarks.check_install [--gpu]`: what this machine lacks to run the project.

Meant for a machine with preinstalled (CUDA) JAX and torch and no network, where the project is
installed with `pip install --no-deps --no-build-isolation -e .` over the preinstalled stack (pip
neither replaces JAX or torch nor fetches anything). It checks, without installing anything:
1. each requirement in pyproject.toml (the core dependencies and the `reference` and `test` extras):
   installed or missing, and whether the installed version is in the pinned range;
2. the requirements of those that are installed (what `--no-deps` leaves out);
3. that the project's entry points import (`jax_ddpm.train`, `torch_reference.train`, ...);
4. with `--gpu`: that JAX and torch see a GPU.
Then it prints the `pip download` command that fetches the missing pure-Python wheels on a machine
with network, and the commands that install them here. Exit 1 when a core requirement or an entry
point is missing, or (with --gpu) no GPU is seen; else 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata as metadata
import re
import sys
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "jax-ddpm"
EXTRAS = ("reference", "test")  # checked besides the core dependencies; "gpu" names jax[cuda12], given there
ENTRY_POINTS = (
    "ddpm_harness.cli",
    "jax_ddpm.train",
    "jax_ddpm.sweep",
    "jax_ddpm.sample",
    "jax_ddpm.samplers.likelihood",
    "torch_reference.train",
    "benchmarks.run",
    "benchmarks.gpu_newcomer",
    "parity_tests.error_table",
)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclasses.dataclass(frozen=True)
class Requirement:
    name: str
    specifier: str  # ">=0.10.2,<0.11", or ""
    group: str  # "core", an extra's name, or "needed by <package>"
    extras: tuple[str, ...] = ()


def parse_requirement(text: str, group: str) -> Optional[Requirement]:
    """A requirement line; None when its environment marker excludes this machine."""
    try:
        from packaging.requirements import Requirement as Parsed
    except ImportError:  # no packaging: name and specifier by hand, markers ignored
        head = text.split(";")[0].strip()
        match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*)$", head)
        extras = tuple(e.strip() for e in (match.group(2) or "[]")[1:-1].split(",") if e.strip())
        return Requirement(_normalize(match.group(1)), match.group(3).strip(), group, extras)
    parsed = Parsed(text)
    if parsed.marker is not None and not parsed.marker.evaluate({"extra": ""}):
        return None
    return Requirement(_normalize(parsed.name), str(parsed.specifier), group, tuple(sorted(parsed.extras)))


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The core dependencies and the EXTRAS of pyproject.toml, the project's own extras expanded."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out, seen_groups = [], set()

    def add(lines: list[str], group: str) -> None:
        for line in lines:
            req = parse_requirement(line, group)
            if req is None:
                continue
            if req.name == PROJECT:  # e.g. test = ["jax-ddpm[reference,quality]", ...]
                for extra in req.extras:
                    if extra not in seen_groups:
                        seen_groups.add(extra)
                        add(optional.get(extra, []), extra)
            else:
                out.append(req)

    add(project.get("dependencies", []), "core")
    for extra in EXTRAS:
        if extra not in seen_groups:
            seen_groups.add(extra)
            add(optional.get(extra, []), extra)
    return out


def installed_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def in_range(version: str, specifier: str) -> bool:
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return True
    return SpecifierSet(specifier).contains(version, prereleases=True)


def dependencies_of(name: str) -> list[Requirement]:
    """The unconditional requirements of an installed distribution (no extras, markers for this machine)."""
    out = []
    for line in metadata.requires(name) or []:
        req = parse_requirement(line, f"needed by {name}")
        if req is not None:
            out.append(req)
    return out


@dataclasses.dataclass
class Report:
    present: dict = dataclasses.field(default_factory=dict)  # name -> version
    missing: dict = dataclasses.field(default_factory=dict)  # name -> group
    out_of_range: dict = dataclasses.field(default_factory=dict)  # name -> (version, specifier)
    broken_imports: dict = dataclasses.field(default_factory=dict)  # module -> error
    gpu: dict = dataclasses.field(default_factory=dict)

    def failed(self, need_gpu: bool) -> bool:
        core_missing = any(group == "core" or group.startswith("needed by") for group in self.missing.values())
        no_gpu = need_gpu and not all(self.gpu.values())
        return core_missing or bool(self.broken_imports) or no_gpu


def check(
    requirements: list[Requirement],
    version_of: Callable[[str], Optional[str]] = installed_version,
    deps_of: Callable[[str], list[Requirement]] = dependencies_of,
) -> Report:
    """Which requirements (and, for those installed, their own requirements) are present, missing
    or outside their pinned range."""
    report = Report()
    queue, seen = list(requirements), set()
    while queue:
        req = queue.pop(0)
        if req.name in seen:
            continue
        seen.add(req.name)
        version = version_of(req.name)
        if version is None:
            report.missing[req.name] = req.group
            continue
        report.present[req.name] = version
        if not in_range(version, req.specifier):
            report.out_of_range[req.name] = (version, req.specifier)
        if req.group in ("core", "reference") or req.group.startswith("needed by"):
            queue += deps_of(req.name)
    return report


def check_imports(modules: tuple[str, ...] = ENTRY_POINTS) -> dict:
    broken = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # any failure to import is what this reports
            broken[module] = f"{type(err).__name__}: {err}"
    return broken


def check_gpu() -> dict:
    out = {}
    try:
        import jax

        out["JAX sees a GPU"] = jax.default_backend() == "gpu"
    except Exception:  # reported as no GPU
        out["JAX sees a GPU"] = False
    try:
        import torch

        out["torch sees a GPU"] = bool(torch.cuda.is_available())
    except Exception:  # reported as no GPU
        out["torch sees a GPU"] = False
    return out


def recipe(missing: list[str]) -> list[str]:
    """Commands that fetch the missing wheels elsewhere and install them here, offline."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [
        "On a machine with network access (any OS; the wheels are for this machine's Python " + py + "):",
        f"  python3 -m pip download --no-deps --only-binary=:all: --python-version {py} --implementation cp "
        "--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels " + " ".join(missing),
        "Copy the folder wheels/ here, then, in the project's root:",
        "  python3 -m pip install --no-index --no-deps wheels/*.whl",
        "  python3 -m pip install --no-deps --no-build-isolation -e .",
        "  python3 -m benchmarks.check_install --gpu   # again: a new package may need others",
    ]


def format_report(report: Report, need_gpu: bool) -> list[str]:
    lines = [f"{len(report.present)} requirement(s) present."]
    for name, group in sorted(report.missing.items()):
        lines.append(f"MISSING  {name}  ({group})")
    for name, (version, spec) in sorted(report.out_of_range.items()):
        lines.append(f"VERSION  {name} {version} is outside {spec} (pyproject.toml); kept by --no-deps, untested")
    for module, error in report.broken_imports.items():
        lines.append(f"IMPORT   {module} fails: {error}")
    for what, ok in report.gpu.items():
        lines.append(f"{'GPU' if ok else 'NO GPU'}   {what}: {'yes' if ok else 'no'}")
    if report.missing:
        lines += [""] + recipe(sorted(report.missing))
    lines.append("")
    lines.append(
        "NOT READY"
        if report.failed(need_gpu)
        else "ready" + (" (missing test extras only affect the tests)" if report.missing else "")
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List what this machine lacks to run jax-ddpm (installs nothing).")
    parser.add_argument("--gpu", action="store_true", help="also require that JAX and torch see a GPU")
    args = parser.parse_args(argv)
    report = check(project_requirements())
    report.broken_imports = check_imports()
    report.gpu = check_gpu()
    print("\n".join(format_report(report, args.gpu)))
    return 1 if report.failed(args.gpu) else 0


if __name__ == "__main__":
    sys.exit(main())
