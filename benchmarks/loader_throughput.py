"""Training-loader throughput per CPU core: the path before the prepared-image store (the baseline)
against today's, in the same run, on generated photo-like JPEGs.

- baseline ("decode each epoch"): host decode of the original, antialiased resize to S px, then
  torchvision's per-sample augmentation pipeline (the v2 transforms guie used until the batched
  augmentations: copied below as it was), one image at a time;
- store + batched: the prepared view read from the memory-mapped store, flip and JPEG per image,
  the rest of the augmentations and the normalisation on batches of 32 (`BatchAugment`).

One process, one torch thread: images/s per core. The store's one-off build (decode + resize once per
image, in parallel) is reported too. Then the cores an 8-GPU node needs to feed ViT-H-14 fine-tuning:
2,400-3,200 images/s at 224 px (300-400 per H100 at 30-40% MFU), about half at 290 px / stride 12.

    python benchmarks/loader_throughput.py                  # 1024x768 and 2000x1500 originals, 224 and 290 px
    python benchmarks/loader_throughput.py --images 48 --sizes 1024x768 --views 224
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from guie.contract import host_decode
from guie.data.augment import BatchAugment, draw, per_image
from guie.data.manifest import ManifestRow
from guie.data.prepared import PreparedStore
from guie.data.transforms import EvalPreprocess, ResizeToUint8
from guie.params.train import AugmentParams
from guie.plan.probe import photo_like

TARGET_RATIO = 8.0  # store + batched over decode each epoch, at 224 px
NODE_RATE = {224: (2400, 3200), 290: (1200, 1600)}  # images/s an 8xH100 node consumes (ViT-H-14; 290: stride 12)
BATCH = 32


class _RGBShift(v2.Transform):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"offset": torch.randint(-self.limit, self.limit + 1, (3, 1, 1), dtype=torch.int16)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return (inpt.to(torch.int16) + params["offset"]).clamp(0, 255).to(torch.uint8)


def baseline_augment(p: AugmentParams) -> v2.Compose:
    """The per-sample torchvision pipeline guie trained with before `BatchAugment` (the baseline)."""

    def maybe(prob: float, t: v2.Transform) -> v2.Transform:
        return v2.RandomApply([t], p=prob)

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=p.hflip),
            maybe(p.jpeg, v2.JPEG(quality=list(p.jpeg_quality))),
            maybe(
                p.affine,
                v2.RandomAffine(degrees=p.rotate, translate=(p.shift, p.shift), scale=(1 - p.scale, 1 + p.scale)),
            ),
            maybe(p.brightness_contrast, v2.ColorJitter(brightness=p.brightness, contrast=p.contrast)),
            maybe(p.rgb_shift, _RGBShift(p.rgb_shift_limit)),
            v2.RandomErasing(p=p.cutout, scale=p.cutout_area, value=0.0),
        ]
    )


def rate(fn, n: int) -> float:
    fn(min(n, 4))  # warm-up: codecs, allocator
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def originals(root: Path, size: str, n: int) -> list[ManifestRow]:
    width, height = (int(v) for v in size.split("x"))
    rows = []
    for i in range(n):
        photo_like(root / f"{size}_{i}.jpg", width, height, i)
        rows.append(
            ManifestRow(
                f"{size}_{i}.jpg", f"{hash((size, i)) & (2**256 - 1):064x}", "b", "d", "c", "train", width, height
            )
        )
    return rows


def measure(root: Path, rows: list[ManifestRow], view: int, seeds: list[int]) -> tuple[float, float, float]:
    """images/s of decoding each epoch (the baseline), of the store + batched path, and of the store's build."""
    params = AugmentParams()
    pre = EvalPreprocess(view, "squash", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    resize, baseline = ResizeToUint8(pre), baseline_augment(params)

    def decode_each_epoch(n: int) -> None:
        for i in range(n):
            torch.manual_seed(seeds[i])
            pre.normalize(baseline(resize(host_decode(root / rows[i].path))).float().unsqueeze(0))

    store = PreparedStore(root / "store", pre)
    start = time.perf_counter()
    store.ensure(rows, root, workers=1)
    build = len(rows) / (time.perf_counter() - start)
    batch_augment = BatchAugment(pre)

    def store_batched(n: int) -> None:
        for first in range(0, n, BATCH):
            items = range(first, min(n, first + BATCH))
            drawn = [draw(seeds[i], params) for i in items]
            views = [per_image(store.view(rows[i].sha256), row) for i, row in zip(items, drawn, strict=True)]
            batch_augment(torch.stack(views), torch.stack(drawn))

    return rate(decode_each_epoch, len(rows)), rate(store_batched, len(rows)), build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="originals per size (and views per measurement)")
    parser.add_argument("--sizes", default="1024x768,2000x1500")
    parser.add_argument("--views", default="224,290", help="view sizes (px)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in np.random.default_rng(0).integers(0, 2**62, args.images)]
    print(f"per core (1 process, 1 torch thread), {args.images} images per row, batches of {BATCH}\n")
    header = ("originals", "view", "decode each epoch", "store + batched", "ratio", "store build")
    print(f"{header[0]:<11} {header[1]:>5} {header[2]:>18} {header[3]:>16} {header[4]:>7} {header[5]:>12}")
    ratios_224 = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in args.sizes.split(","):
            rows = originals(root, size, args.images)
            for view in (int(v) for v in args.views.split(",")):
                old, new, build = measure(root, rows, view, seeds)
                print(f"{size:<11} {view:>5} {old:>13.1f} im/s {new:>11.1f} im/s {new / old:>6.1f}x {build:>7.1f} im/s")
                ratios_224 += [new / old] if view == 224 else []
                if view in NODE_RATE:
                    low, high = NODE_RATE[view]
                    print(
                        f"{'':<17} cores for an 8xH100 node ({low:,}-{high:,} im/s): "
                        f"{low / old:,.0f}-{high / old:,.0f} "
                        f"decoding each epoch, {low / new:,.0f}-{high / new:,.0f} from the store"
                    )
    if ratios_224:
        worst = min(ratios_224)
        verdict = "met" if worst >= TARGET_RATIO else "NOT met"
        target = f"(target >= {TARGET_RATIO:g}x): {verdict}"
        print(f"\nat 224 px, store + batched over decode each epoch: at least {worst:.1f}x {target}")


if __name__ == "__main__":
    main()
