"""Image preprocessing. `EvalPreprocess` is THE eval preprocessing: embedding, evaluation and the
exported TorchScript model all run this one module, so train/eval/export cannot drift apart."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from guie.config import PreprocessParams


def decode_image(path) -> torch.Tensor:
    """Decode exactly as the host does: PIL RGB conversion, EXIF orientation NOT applied.
    Returns uint8 [3, H, W]."""
    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB"))


class EvalPreprocess(nn.Module):
    """uint8 [B,3,H,W] of any size -> float [B,3,S,S] normalised with the backbone's mean/std.

    Scriptable with ops that torch 1.11 (Kaggle's scorer) can read: the antialiased bicubic
    resize is called directly because F.interpolate scripts newer branches (lanczos) too.
    """

    def __init__(self, image_size: int, resize: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if resize not in ("squash", "shortest_side_crop"):
            raise ValueError(f"preprocess.resize: unknown mode {resize!r}")
        self.image_size = image_size
        self.crop = resize == "shortest_side_crop"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8/float [B,3,H,W] -> float [B,3,S,S] in 0..255."""
        size = self.image_size
        x = x.float()
        h, w = x.shape[-2], x.shape[-1]
        if self.crop:
            scale = float(size) / float(min(h, w))
            nh = max(size, int(round(h * scale)))
            nw = max(size, int(round(w * scale)))
            x = torch.ops.aten._upsample_bicubic2d_aa(x, [nh, nw], False, None, None)
            top = (nh - size) // 2
            left = (nw - size) // 2
            x = x[:, :, top : top + size, left : left + size]
        else:
            x = torch.ops.aten._upsample_bicubic2d_aa(x, [size, size], False, None, None)
        # bicubic overshoots; clamp to the pixel range like PIL does
        return x.clamp(0.0, 255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float [B,3,S,S] in 0..255 -> normalised."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(x))


def build_eval_preprocess(params: PreprocessParams, mean: Sequence[float], std: Sequence[float]) -> EvalPreprocess:
    return EvalPreprocess(params.image_size, params.resize, mean, std)


class ResizeToUint8:
    """The eval resize, rounded back to uint8 [3,S,S]: the cacheable first half of a training view."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = preprocess

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess.resize(image.unsqueeze(0)).round().to(torch.uint8)[0]


class TrainAugment:
    """The paper's augmentations on a resized uint8 view, then the eval normalisation -> float [3,S,S]."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = preprocess
        self.augment = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.8, 1.2)),  # shift/scale/rotate
                v2.ColorJitter(brightness=0.3, contrast=0.3),
                v2.RandomErasing(p=0.3, scale=(0.02, 0.15), value=0.0),  # cutout
            ]
        )

    def __call__(self, resized: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess.normalize(self.augment(resized).float().unsqueeze(0))[0]


class Normalize:
    """Normalisation only, for views that were already resized (`ResizeToUint8`)."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = preprocess

    def __call__(self, resized: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess.normalize(resized.float().unsqueeze(0))[0]


class EvalTransform:
    """Per-image exact eval view for DataLoaders: uint8 [3,H,W] -> float [3,S,S]."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = preprocess

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess(image.unsqueeze(0))[0]
