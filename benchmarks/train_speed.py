"""Training speed on the embedded default: stage 1 with the frozen-tower feature cache vs the
baseline that recomputes the tower on every batch, and images/s of each stage.

Both stage-1 runs train the same head for the same epochs from the same data and seed; the
baseline (the first stage with `cached_views: 0`) runs the frozen tower on every augmented batch, the cached
run once per image and cached view. Held-out mP@5 (head features, no PCA) of both is printed
side by side. Images/s counts training images seen per second of the whole stage (caching and
per-epoch held-out scoring included). Run it on a quiet machine: CPU contention distorts torch's
thread pool.

    python benchmarks/train_speed.py                          # params.yaml, 5 head epochs, 2 finetune epochs
    python benchmarks/train_speed.py --model ViT-B-32 --finetune-epochs 0   # a real tower's cost (random init)
    python benchmarks/train_speed.py --device cuda --precision auto   # on a GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from guie.data.manifest import read_manifest
from guie.layout import Layout
from guie.params.load import Params, load_params
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest
from guie.stages.train import TrainPaths, train_stage
from guie.stages.weights import materialise_weights

TARGET_RATIO = 3.0  # cached stage 1 over recomputing stage 1, at 5 epochs


def with_train(params: Params, **changes) -> Params:
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **changes))


def with_stage(params: Params, name: str, **changes) -> Params:
    stages = dict(params.train.stages)
    stages[name] = dataclasses.replace(stages[name], **changes)
    return with_train(params, stages=stages)


def timed(fn) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = fn()
    return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument(
        "--model", help="open_clip model name instead of params' (random init: speed depends on the architecture)"
    )
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--augment-on", default="auto", choices=["auto", "loader", "device"], help="train.augment_on")
    parser.add_argument("--num-workers", type=int, help="train.num_workers (default: params')")
    args = parser.parse_args()

    params = with_train(
        load_params(args.params), device=args.device, precision=args.precision, augment_on=args.augment_on
    )
    if args.num_workers is not None:
        params = with_train(params, num_workers=args.num_workers)
    if args.model:
        params = dataclasses.replace(params, model=dataclasses.replace(params.model, name=args.model, pretrained=""))
    # the chain's first stage (the head on the frozen tower) and the stage after it
    first, *rest = params.train.stages
    second = rest[0] if rest else None
    views = params.train.stages[first].cached_views or 1
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout(Path(tmp))
        download_sources(params, layout.root, layout.raw, layout.downloads_dir)
        materialise_weights(params.model, params.seed, layout.weights)
        build_manifest(params, layout.root, layout.raw, layout.manifest, layout.rejected)
        n_train = sum(r.split == "train" for r in read_manifest(layout.manifest))

        def run(p: Params, name: str, source: Path | None, out: Path):
            where = TrainPaths.in_layout(layout, p, name)
            where = dataclasses.replace(
                where, input_checkpoint=source, out=out, metrics_dir=layout.root / f"m_{out.stem}"
            )
            return lambda: train_stage(p, name, where)

        def stage1(cached_views: int, out: str):
            p = with_stage(params, first, epochs=args.head_epochs, cached_views=cached_views)
            return run(p, first, None, layout.root / out)

        print(
            f"\n{params.model.name}, {n_train} training images, batch {params.train.batch_size}, "
            f"torch threads {torch.get_num_threads()}, augmentations on the {args.augment_on} side, "
            f"{params.train.num_workers} loader workers"
        )
        print(f"{'run':<40} {'seconds':>8} {'images/s':>9} {'held-out mP@5':>14}")

        def row(name: str, seconds: float, epochs: int, summary: dict) -> None:
            # printed as each run ends: a long run cut short still reports the runs before it
            print(f"{name:<40} {seconds:8.1f} {epochs * n_train / seconds:9.1f} {summary['heldout_mp5']:14.3f}")

        # the baseline first: it also warms the page cache for the images both runs decode
        t_recompute, recompute = timed(stage1(0, "recompute.pt"))
        row(f"{first}, recompute tower (baseline), {args.head_epochs} ep", t_recompute, args.head_epochs, recompute)
        t_cached, cached = timed(stage1(views, "head.pt"))
        row(f"{first}, cached features ({views} view(s)), {args.head_epochs} ep", t_cached, args.head_epochs, cached)
        if args.finetune_epochs and second:
            ft = with_stage(params, second, epochs=args.finetune_epochs)
            t_finetune, finetune = timed(run(ft, second, layout.root / "head.pt", layout.trained(second)))
            entry = params.train.stages[second]
            trains = f"blocks {entry.unfreeze_from}+" if entry.tower == "blocks" else f"tower {entry.tower}"
            row(f"{second}, {trains}, {args.finetune_epochs} ep", t_finetune, args.finetune_epochs, finetune)

    print(f"compute: {cached['compute']}")
    ratio = t_recompute / t_cached
    print(
        f"\nstage 1 speed-up, cached / recompute: {ratio:.2f}x (target >= {TARGET_RATIO}x): "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}"
    )
    print(f"held-out mP@5: cached {cached['heldout_mp5']:.3f} vs recompute {recompute['heldout_mp5']:.3f}")


if __name__ == "__main__":
    main()
