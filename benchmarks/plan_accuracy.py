"""How close `guie plan`'s CPU estimates come to the embedded default's real stage times.

Clones the repository (HEAD) into a scratch folder and runs every stage's command of `dvc.yaml` there
in order (`guie download`, `guie weights`, ..., `guie train <stage>` per entry of train.stages), each
timed as a fresh process, exactly what `dvc repro` runs without DVC's own bookkeeping. Just before each
stage it makes the plan of the same params for this machine (`guie plan --gpu cpu`: its measurements
taken then, so a machine whose load changes during the run is measured as the stage meets it) and
prints estimate / measured per stage. The target: every estimated stage within 2x (ratio in [0.5, 2]).

    flock /tmp/guie-cpu.lock python benchmarks/plan_accuracy.py            # 2 cores, this machine's
    python benchmarks/plan_accuracy.py --cpus 2 --keep /tmp/plan-scratch

With `--gpu-speed` (what `.ci/gpu-checks speed` runs after benchmarks/train_speed.py) it only prints the
plan's images/s of the embedded default's first two stages on one GPU of the kind torch sees here, with
train_speed's epochs and loader workers, to read beside the images/s train_speed measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET = 2.0


def stage_commands(clone: Path) -> list[tuple[str, str]]:
    """(DVC stage name, command) in dvc.yaml's order, train's foreach expanded over train.stages."""
    dvc = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((clone / "params.yaml").read_text())
    out = []
    for name, stage in dvc.items():
        if "foreach" in stage:
            for key in params["train"]["stages"]:
                out.append((f"{name}@{key}", stage["do"]["cmd"].replace("${key}", key)))
        else:
            out.append((name, stage["cmd"]))
    return out


def run_stage(clone: Path, cmd: str) -> float:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, shell=True, cwd=clone, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"`{cmd}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def gpu_speed(args: argparse.Namespace) -> None:
    """The plan's images/s of train_speed's runs on one GPU of the kind here (the plan itself reads no GPU)."""
    import dataclasses

    import torch

    from guie.layout import Layout
    from guie.params.load import load_params
    from guie.plan.machines import preset_for
    from guie.plan.run import make_plan

    props = torch.cuda.get_device_properties(0)
    kind = preset_for(props.name, props.total_memory / 2**30) or "h100"
    params = load_params(REPO / "params.yaml")
    first, second, *_ = params.train.stages
    stages = dict(params.train.stages)
    stages[first] = dataclasses.replace(stages[first], epochs=args.head_epochs)
    stages[second] = dataclasses.replace(stages[second], epochs=args.finetune_epochs)
    train = dataclasses.replace(params.train, stages=stages, num_workers=args.num_workers)
    plan = make_plan(dataclasses.replace(params, train=train), Layout(REPO), kind, 1, os.cpu_count(), None)
    print(f"guie plan's estimate on 1 x {kind} ({props.name}), {os.cpu_count()} cores, MFU {plan.mfu:g}:")
    for row in plan.rows:
        if row.images_per_s:
            print(f"  {row.stage:<16} {row.images_per_s:9.1f} images/s  ({row.epochs} epochs, bound: {row.bound})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=None, help="cores the plan assumes (default: this machine's)")
    ap.add_argument("--keep", type=Path, help="scratch folder to use and keep (default: a temp dir, deleted)")
    ap.add_argument("--gpu-speed", action="store_true", help="only the plan of train_speed's runs on this GPU")
    ap.add_argument("--head-epochs", type=int, default=5, help="with --gpu-speed: train_speed's")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="with --gpu-speed: train_speed's")
    ap.add_argument("--num-workers", type=int, default=4, help="with --gpu-speed: train_speed's")
    args = ap.parse_args()
    if args.gpu_speed:
        gpu_speed(args)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="guie-plan-accuracy-"))
    clone = work / "clone"
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    from guie.layout import Layout
    from guie.params.load import load_params
    from guie.plan.render import render
    from guie.plan.run import make_plan

    print(f"the embedded default's stages in {clone}, one fresh process each, each planned just before:")
    print(f"{'stage':<16} {'estimate':>9} {'measured':>9} {'ratio':>7}", flush=True)
    worst, estimated, real_total = 1.0, 0.0, 0.0
    for name, cmd in stage_commands(clone):
        plan = make_plan(load_params(clone / "params.yaml"), Layout(clone), "cpu", 1, args.cpus, None)
        row = next(r for r in plan.rows if r.stage == name)
        real = run_stage(clone, cmd)
        if row.wall_s is None:
            print(f"{name:<16} {'-':>9} {real:>8.1f}s {'-':>7}  (not estimated: {row.bound})", flush=True)
            continue
        ratio = row.wall_s / real
        worst, estimated, real_total = max(worst, ratio, 1 / ratio), estimated + row.wall_s, real_total + real
        print(f"{name:<16} {row.wall_s:>8.1f}s {real:>8.1f}s {ratio:>6.2f}x", flush=True)
    print(f"{'all estimated':<16} {estimated:>8.1f}s {real_total:>8.1f}s {estimated / real_total:>6.2f}x")
    print("\nthe last plan (made before `evaluate`):\n" + "\n".join(render(plan, "params.yaml")))
    verdict = "met" if worst <= TARGET else "NOT met"
    print(f"\nworst stage off by {worst:.2f}x (target: within {TARGET:g}x either way): {verdict}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
