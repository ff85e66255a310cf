"""Fresh-clone timing and reproducibility of the main job (README command 1).

Clones the repository twice into a scratch directory and, in each clone, runs the stages of
`dvc repro` one by one (timing each), then a second `dvc repro` (must skip everything) and
`dvc status`. Prints per-stage seconds, the install time, the no-op re-run time against the
full run (the baseline), and whether the two clones' submission.zip are byte-identical.

    python benchmarks/pipeline_repro.py                 # installs a fresh venv in the first clone
    python benchmarks/pipeline_repro.py --venv .venv    # reuse an existing venv (skips install timing)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: str, cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"`{cmd}` failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def stages(clone: Path) -> list[str]:
    return list(yaml.safe_load((clone / "dvc.yaml").read_text())["stages"])


def run_clone(clone: Path, venv: Path, env: dict) -> dict:
    env = dict(env, PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
    timings = {}
    for stage in stages(clone):
        # --force: a stage whose committed outputs already match (verify, evaluate) would be skipped
        timings[stage] = sh(f"dvc repro --force --single-item {stage}", clone, env)
        print(f"  {stage:<16} {timings[stage]:7.1f} s", flush=True)
    noop = sh("dvc repro", clone, env)
    status = subprocess.run("dvc status", shell=True, cwd=clone, env=env, capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256((clone / "submission" / "submission.zip").read_bytes()).hexdigest()
    return {"stages": timings, "noop": noop, "status": status, "sha256": digest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, help="reuse this virtualenv instead of installing one")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="guie-bench-"))
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    results = []
    install = None
    for name in ("clone-a", "clone-b"):
        clone = work / name
        sh(f"git clone -q {REPO} {clone}", work, env)
        venv = args.venv.resolve() if args.venv else work / "venv"
        if not venv.exists():
            install = sh(f"python3.11 -m venv {venv} && {venv}/bin/pip install -q -e '.[test]'", clone, env)
            print(f"install (venv + pip install -e .[test]): {install:.1f} s", flush=True)
        print(f"{name}: dvc repro, stage by stage", flush=True)
        results.append(run_clone(clone, venv, env))

    a, b = results
    full = sum(a["stages"].values())
    print("\n== results ==")
    for stage, secs in a["stages"].items():
        print(f"{stage:<16} {secs:7.1f} s   (clone b: {b['stages'][stage]:7.1f} s)")
    print(f"dvc repro, all stages     : {full:7.1f} s  (baseline)")
    if install is not None:
        print(f"install + dvc repro       : {install + full:7.1f} s  (README command 1; target <= 600 s)")
    print(f"second dvc repro (no-op)  : {a['noop']:7.1f} s  = {a['noop'] / full:.3f}x the full run (target <= 5 s)")
    print(f"dvc status after re-run   : {a['status']!r}")
    print(f"submission.zip sha256 a   : {a['sha256']}")
    print(f"submission.zip sha256 b   : {b['sha256']}")
    print(f"byte-identical            : {a['sha256'] == b['sha256']}")


if __name__ == "__main__":
    main()
