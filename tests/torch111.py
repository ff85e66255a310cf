"""A torch 1.11 interpreter for tests that check what Kaggle's scorer (torch 1.11) can load.

Default tests never build it: they use a cached venv and skip when there is none. Build it once
with `python tests/torch111.py` (about a minute from a local package mirror, 1.7 GiB on disk), or
point GUIE_TORCH111_PYTHON at any Python that imports torch 1.11.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

TORCH_VERSION = "1.11.0"
REQUIREMENTS = [f"torch=={TORCH_VERSION}", "numpy<2"]  # 1.11 wheels are built against numpy 1.x
DEFAULT_VENV = Path.home() / ".cache" / "guie" / "torch111-venv"
ENV_VAR = "GUIE_TORCH111_PYTHON"
BUILD_HINT = f"build it with `python tests/torch111.py` or set {ENV_VAR}"


def _candidate() -> Path:
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else DEFAULT_VENV / "bin" / "python"


@functools.cache
def _imports_torch111(python: Path) -> bool:
    try:
        done = subprocess.run(
            [str(python), "-c", "import torch; print(torch.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip().startswith("1.11.")


def torch111_python() -> Path | None:
    """The cached torch 1.11 interpreter ($GUIE_TORCH111_PYTHON, else the default venv), or None."""
    python = _candidate()
    return python if python.is_file() and _imports_torch111(python) else None


def _has_python310() -> bool:
    try:
        _python310()
    except RuntimeError:
        return False
    return True


def torch111_or_skip() -> Path:
    """For tests: the torch 1.11 interpreter, or skip the test saying how to get one.

    Under CI (CI=true, where .ci/run builds the venv first) only a machine without Python 3.10
    may skip: there a missing interpreter fails the test, so the scorer's torch is never silently
    left out."""
    import pytest

    python = torch111_python()
    if python is None:
        message = f"no torch 1.11 interpreter at {_candidate()}; {BUILD_HINT}"
        if os.environ.get("CI") == "true" and _has_python310():
            pytest.fail(f"{message} (CI: .ci/run builds it; this machine has Python 3.10, so it must)")
        pytest.skip(message)
    return python


def run_torch111(python: Path, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `script` in the torch 1.11 interpreter; a failure raises with its stderr."""
    done = subprocess.run(
        [str(python), "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if done.returncode != 0:
        raise AssertionError(f"torch 1.11 subprocess failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return done


def outputs_in_torch111(python: Path, module_archive: bytes, x, tmp: Path):
    """What torch 1.11 computes for `x` with the scripted module saved as `module_archive` (no grad, eval)."""
    import torch

    (tmp / "module.pt").write_bytes(module_archive)
    torch.save(x, tmp / "x.pt")
    script = (
        "import sys, torch\n"
        "assert torch.__version__.startswith('1.11.'), torch.__version__\n"
        "model = torch.jit.load(sys.argv[1]).eval()\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.load(sys.argv[2])), sys.argv[3])\n"
    )
    run_torch111(python, script, str(tmp / "module.pt"), str(tmp / "x.pt"), str(tmp / "y.pt"))
    return torch.load(tmp / "y.pt")


def _python310() -> Path:
    """torch 1.11 has wheels for CPython 3.7-3.10 only; find a 3.10 (pyenv's, else on PATH)."""
    found: list[Path] = []
    if pyenv := shutil.which("pyenv"):
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        found += sorted(Path(root, "versions").glob("3.10.*/bin/python"), reverse=True)
    if on_path := shutil.which("python3.10"):
        found.append(Path(on_path))
    for python in found:
        check = subprocess.run(
            [str(python), "-c", "import sys, venv; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if check.returncode == 0 and check.stdout.strip() == "(3, 10)":
            return python
    raise RuntimeError("no working Python 3.10 found (torch 1.11 needs <= 3.10); e.g. `pyenv install 3.10`")


def ensure_torch111_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Build (or reuse) a venv with torch 1.11 at `venv`; return its python."""
    python = venv / "bin" / "python"
    if python.is_file() and _imports_torch111(python):
        return python
    if venv.exists():
        shutil.rmtree(venv)  # a half-built venv from an interrupted run
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(_python310()), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    _imports_torch111.cache_clear()
    if not _imports_torch111(python):
        raise RuntimeError(f"{python} does not import torch {TORCH_VERSION} after installing it")
    return python


if __name__ == "__main__":
    if sys.argv[1:] == ["--has-python310"]:  # for .ci/run: exit 0 when a venv can be built here
        sys.exit(0 if _has_python310() else 1)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV
    print(ensure_torch111_venv(target))
