"""Image preprocessing. `EvalPreprocess` is THE eval preprocessing: embedding, evaluation and the
exported TorchScript model all run this one module, so train/eval/export cannot drift apart."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from guie.params.preprocess import PreprocessParams

# Above this downscale factor per side, `stepped_downscale` halves first: torch 1.11's CUDA
# antialiased kernel keeps its filter weights in 48 KiB of shared memory and refuses large factors.
MAX_AA_DOWNSCALE = 4


def _aa_bicubic(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # called directly: F.interpolate scripts newer branches (lanczos) that torch 1.11 cannot load
    return torch.ops.aten._upsample_bicubic2d_aa(x, [h, w], False, None, None)


def _halve_while_large(x: torch.Tensor, h: int, w: int, max_factor: int) -> torch.Tensor:
    """Halve (antialiased) each side that is more than `max_factor` times its target h/w."""
    while x.size(-2) > max_factor * h or x.size(-1) > max_factor * w:
        ih, iw = x.size(-2), x.size(-1)
        nh = (ih + 1) // 2 if ih > max_factor * h else ih
        nw = (iw + 1) // 2 if iw > max_factor * w else iw
        x = _aa_bicubic(x, nh, nw)
    return x


class EvalPreprocess(nn.Module):
    """uint8 [B,3,H,W] of any size -> float [B,3,S,S] normalised with the backbone's mean/std.

    Scriptable with ops that torch 1.11 (Kaggle's scorer) can read: the antialiased bicubic
    resize is called directly because F.interpolate scripts newer branches (lanczos) too.
    `stepped_downscale` (set for CUDA exports) halves huge images first so that no single
    resize shrinks a side by more than MAX_AA_DOWNSCALE; off, outputs are a single resize.
    """

    def __init__(
        self, image_size: int, resize: str, mean: Sequence[float], std: Sequence[float], stepped_downscale: bool = False
    ):
        super().__init__()
        if resize not in ("squash", "shortest_side_crop"):
            raise ValueError(f"preprocess.resize: unknown mode {resize!r}")
        self.image_size = image_size
        self.crop = resize == "shortest_side_crop"
        self.stepped_downscale = stepped_downscale
        self.max_aa_downscale = MAX_AA_DOWNSCALE  # an attribute: TorchScript cannot read module globals
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8/float [B,3,H,W] -> float [B,3,S,S] in 0..255."""
        size = self.image_size
        x = x.float()
        h, w = x.shape[-2], x.shape[-1]
        nh, nw = size, size
        if self.crop:
            scale = float(size) / float(min(h, w))
            nh = max(size, int(round(h * scale)))
            nw = max(size, int(round(w * scale)))
        if self.stepped_downscale:
            x = _halve_while_large(x, nh, nw, self.max_aa_downscale)
        x = _aa_bicubic(x, nh, nw)
        if self.crop:
            top = (nh - size) // 2
            left = (nw - size) // 2
            x = x[:, :, top : top + size, left : left + size]
        # bicubic overshoots; clamp to the pixel range like PIL does
        return x.clamp(0.0, 255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float [B,3,S,S] in 0..255 -> normalised."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(x))


def build_eval_preprocess(params: PreprocessParams, mean: Sequence[float], std: Sequence[float]) -> EvalPreprocess:
    return EvalPreprocess(params.image_size, params.resize, mean, std)


def cpu_copy(preprocess: EvalPreprocess) -> EvalPreprocess:
    """The loader's own CPU copy: the embedder's module moves to the GPU with the model, the loader's
    transforms run on the CPU (in workers too), so they must not share its buffers."""
    return copy.deepcopy(preprocess).cpu()


class ResizeToUint8:
    """The eval resize, rounded back to uint8 [3,S,S]: the cacheable first half of a training view."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = cpu_copy(preprocess)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess.resize(image.unsqueeze(0)).round().to(torch.uint8)[0]


class Normalize:
    """Normalisation only, for views that were already resized (`ResizeToUint8`)."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = cpu_copy(preprocess)

    def __call__(self, resized: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess.normalize(resized.float().unsqueeze(0))[0]


class EvalTransform:
    """Per-image exact eval view for DataLoaders: uint8 [3,H,W] -> float [3,S,S]."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = cpu_copy(preprocess)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.preprocess(image.unsqueeze(0))[0]
