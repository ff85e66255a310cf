"""CPU sharing: the embedded default's finetune stage alone and beside one CPU-bound process, with
guie's thread policy (guie/threads.py) and with torch's defaults, in the same run.

Each run trains the finetune stage (`--epochs`, from a head trained once) in a fresh interpreter,
so the OpenMP settings are read as they would be by `guie train finetune`; the stage's own time is
measured inside it (start-up and imports excluded). The CPU-bound process (`--competitor`) is the
same stage training over and over with the same settings (two `dvc repro`s at once), or a
pure-Python busy loop (one thread); it starts before the run and is killed after. A torch-defaults
run beside it that passes `--cap` times its idle time is stopped and reported as more than that.
Every finished run must end with the same weights (the policy changes no floats). Run it alone on
the machine, e.g.

    flock /tmp/guie-cpu.lock python benchmarks/shared_cpu.py --spin 1000    # 1 finetune epoch, ~4 min
    flock /tmp/guie-cpu.lock python benchmarks/shared_cpu.py --competitor busy --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from guie.threads import SHARED_CPU, WAIT_SETTINGS, process_env

TARGET_SLOWDOWN = 3.0  # beside the other process, with the policy, over alone with the policy (2 cores)
IDLE_TOLERANCE = 1.10  # alone: the policy over torch's defaults

# the timed child: the stage's own seconds and the weights' sha256, as one JSON line; with "forever",
# the competing training (the stage again and again, in its own files)
CHILD = r"""
import hashlib, json, sys, time
from pathlib import Path
from guie.layout import Layout
from guie.params.load import load_params
from guie.stages.train import TrainPaths, train_stage
root, tag, forever = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "forever"
layout, p = Layout(root), load_params(root / "params.yaml")
out, work = root / f"{tag}.pt", root / f"work_{tag}"
while True:
    start = time.perf_counter()
    where = TrainPaths(project_root=root, manifest=layout.manifest, weights=layout.weights,
                       input_checkpoint=layout.trained("head"), out=out, metrics_dir=work / "metrics",
                       checkpoint=work / "last.pt", feature_cache=work / "features.pt")
    train_stage(p, "finetune", where, fresh=True)
    seconds = time.perf_counter() - start
    if not forever:
        break
print(json.dumps({"seconds": seconds, "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}))
"""


def guie(root: Path, *args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "guie"), *args, "--root", str(root), "--params", str(root / "params.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def prepare(root: Path, params: Path, epochs: int) -> None:
    """A project with the finetune stage's inputs: the default's data, backbone and a 1-epoch head."""
    raw = yaml.safe_load(params.read_text())
    raw["train"]["stages"]["head"]["epochs"] = 1  # only the finetune stage's starting point
    raw["train"]["stages"]["finetune"]["epochs"] = epochs
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in (["download"], ["weights"], ["manifest"], ["train", "head"]):
        guie(root, *stage)


def timed_run(root: Path, env: dict[str, str], out: str, cap: float | None) -> dict | None:
    """The child's report, or None when it ran past `cap` seconds (then it is killed)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), out, "once"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return None
    if child.returncode:
        sys.exit(f"finetune run failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def competitor(kind: str, root: Path, env: dict[str, str]) -> subprocess.Popen:
    """The other CPU-bound process: a pure-Python busy loop, or the same stage training over and over."""
    if kind == "busy":
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # running before the stage starts
    else:
        cmd = [sys.executable, "-c", CHILD, str(root), "competitor", "forever"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)  # past its imports and loading: training when the stage starts
    return proc


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--epochs", type=int, default=1, help="finetune epochs per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each case (the median is reported)")
    parser.add_argument("--cap", type=float, default=6.0, help="stop a torch-defaults shared run past this x idle")
    parser.add_argument(
        "--competitor",
        choices=["training", "busy"],
        default="training",
        help="the other process: the same stage training (as two `dvc repro`s) or a pure-Python busy loop",
    )
    parser.add_argument(
        "--spin", type=int, nargs="*", default=[], help="also try these GOMP_SPINCOUNT values (to tune SPIN_COUNT)"
    )
    return parser.parse_args()


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}x (target <= {target}x): {'met' if ratio <= target else 'NOT met'}"


def main() -> None:
    args = parse_args()
    # torch's defaults: no OpenMP wait settings at all; the policy: what `guie` runs with on a shared
    # machine (GUIE_SHARED_CPU=1)
    defaults = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS} | {"PYTHONHASHSEED": "0"}
    policy = process_env(defaults | {SHARED_CPU: "1"})
    policy_says = ", ".join(f"{k}={policy[k]}" for k in WAIT_SETTINGS if k in policy)
    other = {"training": "a second training", "busy": "a busy loop"}[args.competitor]
    hashes: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="guie-shared-cpu-") as tmp:
        root = Path(tmp)
        prepare(root, args.params, args.epochs)
        print(f"finetune stage of {args.params}, {args.epochs} epoch(s), {os.cpu_count()} CPUs; policy: {policy_says}")

        def case(name: str, env: dict[str, str], shared: bool, cap: float | None = None) -> float | None:
            """The median of `args.repeats` runs, alone or beside the other process; None if stopped."""
            runs = []
            for i in range(args.repeats):
                rival = competitor(args.competitor, root, env) if shared else None
                try:
                    report = timed_run(root, env, f"run_{len(hashes)}_{i}", cap)
                finally:
                    if rival is not None:
                        rival.kill()
                        rival.wait()
                if report is None:
                    print(f"{name:<40} > {cap:6.1f} s (stopped)")
                    return None
                hashes.add(report["sha256"])
                runs.append(report["seconds"])
            median = sorted(runs)[len(runs) // 2]
            print(f"{name:<40} {median:8.1f} s   runs {' '.join(f'{s:.1f}' for s in runs)}")
            return median

        idle_defaults = case("alone, torch defaults", defaults, False)
        idle_policy = case("alone, guie policy", policy, False)
        shared_policy = case(f"beside {other}, guie policy", policy, True)
        shared_defaults = case(f"beside {other}, torch defaults", defaults, True, cap=args.cap * idle_defaults)
        for spin in args.spin:
            env = defaults | {"GOMP_SPINCOUNT": str(spin)}
            alone, beside = case(f"alone, GOMP_SPINCOUNT={spin}", env, False), case(f"beside, {spin}", env, True)
            print(f"{'':<40} beside / alone {beside / alone:.2f}x, alone / torch defaults {alone / idle_defaults:.2f}x")

    print(f"\nslowdown beside {other}, guie policy: {verdict(shared_policy / idle_policy, TARGET_SLOWDOWN)}")
    if shared_defaults is None:
        print(f"slowdown beside {other}, torch defaults: > {args.cap:.0f}x (stopped at the cap)")
    else:
        print(f"slowdown beside {other}, torch defaults: {shared_defaults / idle_defaults:.2f}x")
    print(f"alone, guie policy / torch defaults: {verdict(idle_policy / idle_defaults, IDLE_TOLERANCE)}")
    print(f"weights identical in every finished run: {'yes' if len(hashes) == 1 else f'NO ({len(hashes)} differ)'}")


if __name__ == "__main__":
    main()
