"""The paper's training augmentations, on views already resized by the eval preprocessing."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from guie.data.transforms import EvalPreprocess, cpu_copy
from guie.params.train import AugmentParams


class RGBShift(v2.Transform):
    """Add one random offset in [-limit, limit] to each channel of a uint8 image (torchvision has none)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"offset": torch.randint(-self.limit, self.limit + 1, (3, 1, 1), dtype=torch.int16)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or inpt.dtype != torch.uint8:
            return inpt
        return (inpt.to(torch.int16) + params["offset"]).clamp(0, 255).to(torch.uint8)


def _maybe(p: float, transform: v2.Transform) -> v2.Transform:
    return v2.RandomApply([transform], p=p)


def build_train_augment(params: AugmentParams) -> v2.Compose:
    """The paper's augmentations on a uint8 [3,S,S] view, each applied with its probability."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=params.hflip),
            _maybe(params.jpeg, v2.JPEG(quality=list(params.jpeg_quality))),
            _maybe(
                params.affine,
                v2.RandomAffine(
                    degrees=params.rotate,
                    translate=(params.shift, params.shift),
                    scale=(1 - params.scale, 1 + params.scale),
                ),
            ),
            _maybe(params.brightness_contrast, v2.ColorJitter(brightness=params.brightness, contrast=params.contrast)),
            _maybe(params.rgb_shift, RGBShift(params.rgb_shift_limit)),
            v2.RandomErasing(p=params.cutout, scale=params.cutout_area, value=0.0),  # cutout
        ]
    )


class TrainAugment:
    """The paper's augmentations on a resized uint8 view, then the eval normalisation -> float [3,S,S].

    Randomness comes from torch's global generator; `SeededViews` seeds it per sample."""

    def __init__(self, preprocess: EvalPreprocess, params: AugmentParams | None = None):
        self.preprocess = cpu_copy(preprocess)
        self.augment = build_train_augment(params or AugmentParams())

    def __call__(self, resized: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess.normalize(self.augment(resized).float().unsqueeze(0))[0]
