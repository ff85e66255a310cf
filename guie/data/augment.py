"""The paper's training augmentations, drawn per view and applied to whole batches.

A view's random parameters are a function of its seed alone (`draw`: a counter-based hash, no
generator state), so a view depends neither on its batch nor on worker count, device or resumption.
The per-image part, horizontal flip and JPEG re-compression (a codec takes one image), runs where the
view is read (`per_image`); the rest, shift/scale/rotate, brightness/contrast, RGB shift, cutout and
the normalisation, runs on a whole uint8 batch at once (`BatchAugment`): in the loader on the CPU, on
the GPU when training there.

Each augmentation keeps the distribution torchvision's per-sample pipeline drew (probabilities,
ranges, brightness and contrast in random order, cutout's log-uniform aspect in [0.3, 3.3]); the
batched geometry and colour maths differ from torchvision's in rounding (views stay float after the
JPEG step instead of rounding to uint8 between steps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from guie.data.transforms import EvalPreprocess, cpu_copy
from guie.params.train import AugmentParams

# the columns of a view's parameter row, in the order they are drawn
COLUMNS = (
    "flip",  # 1: mirror the view
    "jpeg",  # 1: re-compress it ...
    "quality",  # ... at this quality
    "affine",  # 1: shift/scale/rotate ...
    "angle",  # degrees
    "tx",  # shift, fraction of the width
    "ty",  # shift, fraction of the height
    "scale",  # zoom factor
    "color",  # 1: brightness and contrast ...
    "brightness",  # factor
    "contrast",  # factor
    "contrast_first",  # 1: contrast before brightness (torchvision's ColorJitter draws the order)
    "rgb",  # 1: shift each channel ...
    "r",  # ... by these offsets (0..255 scale)
    "g",
    "b",
    "cutout",  # 1: zero one rectangle ...
    "area",  # ... of this share of the view
    "log_ratio",  # log of its height/width ratio
    "top",  # its position: share of the room left above and to the left
    "left",
)
C = {name: i for i, name in enumerate(COLUMNS)}
CUTOUT_LOG_RATIO = (math.log(0.3), math.log(3.3))  # torchvision's RandomErasing default
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (contrast's mean)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# views augmented together on a CPU: their float copies stay in cache (1.8x faster per view than 32 at once)
CPU_CHUNK = 8


def uniforms(seed: int, n: int) -> np.ndarray:
    """`n` floats in [0, 1) from `seed` alone: splitmix64 of seed + k * golden ratio (k = 1..n)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed % 2**64) + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _between(u: float, low: float, high: float) -> float:
    return low + u * (high - low)


def _integer(u: float, low: int, high: int) -> int:
    """Uniform over low..high inclusive."""
    return min(high, low + int(u * (high - low + 1)))


def draw(seed: int, params: AugmentParams) -> torch.Tensor:
    """The view's parameter row (float64 [len(COLUMNS)]) for augmentation seed `seed`."""
    u = uniforms(seed, len(COLUMNS))
    row = np.zeros(len(COLUMNS))
    row[C["flip"]] = u[C["flip"]] < params.hflip
    row[C["jpeg"]] = u[C["jpeg"]] < params.jpeg
    row[C["quality"]] = _integer(u[C["quality"]], *params.jpeg_quality)
    row[C["affine"]] = u[C["affine"]] < params.affine
    row[C["angle"]] = _between(u[C["angle"]], -params.rotate, params.rotate)
    row[C["tx"]] = _between(u[C["tx"]], -params.shift, params.shift)
    row[C["ty"]] = _between(u[C["ty"]], -params.shift, params.shift)
    row[C["scale"]] = _between(u[C["scale"]], 1 - params.scale, 1 + params.scale)
    row[C["color"]] = u[C["color"]] < params.brightness_contrast
    row[C["brightness"]] = _between(u[C["brightness"]], 1 - params.brightness, 1 + params.brightness)
    row[C["contrast"]] = _between(u[C["contrast"]], 1 - params.contrast, 1 + params.contrast)
    row[C["contrast_first"]] = u[C["contrast_first"]] < 0.5
    row[C["rgb"]] = u[C["rgb"]] < params.rgb_shift
    for channel in "rgb":
        row[C[channel]] = _integer(u[C[channel]], -params.rgb_shift_limit, params.rgb_shift_limit)
    row[C["cutout"]] = u[C["cutout"]] < params.cutout
    row[C["area"]] = _between(u[C["area"]], *params.cutout_area)
    row[C["log_ratio"]] = _between(u[C["log_ratio"]], *CUTOUT_LOG_RATIO)
    row[C["top"]], row[C["left"]] = u[C["top"]], u[C["left"]]
    return torch.from_numpy(row)


def per_image(view: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """The per-image steps on a uint8 [3,S,S] view: flip, then JPEG re-compression."""
    if row[C["flip"]]:
        view = view.flip(-1)
    if row[C["jpeg"]]:
        view = decode_jpeg(encode_jpeg(view.contiguous(), quality=int(row[C["quality"]])))
    return view


def _affine(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Rotate uint8 views by `angle` about the centre, zoom by `scale`, shift by (tx, ty): nearest pixel,
    zeros outside (RandomAffine's defaults), as one gather per batch (on uint8: 15x faster than float)."""
    n, channels, h, w = x.shape
    p = p.float()  # pixel coordinates: float32 is exact enough, and twice as fast as float64
    angle = torch.deg2rad(p[:, C["angle"]]).view(n, 1, 1)
    scale = p[:, C["scale"]].view(n, 1, 1)
    cos, sin = angle.cos() / scale, angle.sin() / scale
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # an output pixel's offset from the shifted centre, rotated back and unzoomed, is its source pixel;
    # the row and column terms are computed apart and added once per pixel
    dx = torch.arange(w, device=x.device, dtype=p.dtype).view(1, 1, w) - cx - p[:, C["tx"]].view(n, 1, 1) * w
    dy = torch.arange(h, device=x.device, dtype=p.dtype).view(1, h, 1) - cy - p[:, C["ty"]].view(n, 1, 1) * h
    src_x = (cos * dx).add(sin * dy + cx).round_()
    src_y = (cos * dy + cy).add(-sin * dx).round_()
    # a zero border around each view: every source outside the view lands on it
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1)).flatten(2)
    flat = src_y.clamp_(-1, h).add_(1).mul_(w + 2).add_(src_x.clamp_(-1, w).add_(1)).long()
    return padded.gather(2, flat.view(n, 1, h * w).expand(n, channels, h * w)).view(n, channels, h, w)


def _gray_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean grayscale level per image, [n,1,1,1]: the weighted mean of the channel means (summed in
    float64, so the thread count cannot round them)."""
    means = x.flatten(2).sum(-1, dtype=torch.float64) / (x.shape[-2] * x.shape[-1])
    weights = torch.tensor(_GRAY, dtype=torch.float64, device=x.device)
    return (means @ weights).float().view(-1, 1, 1, 1)


def _color(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Brightness and contrast, in each view's drawn order. Without the clamp between them the two orders
    are one map, so: brightness on the views that take it first, contrast, brightness on the others."""
    brightness, contrast = (p[:, C[k]].float().view(-1, 1, 1, 1) for k in ("brightness", "contrast"))
    contrast_first = p[:, C["contrast_first"]].bool().view(-1, 1, 1, 1)
    one = torch.ones_like(brightness)
    x = x.mul_(torch.where(contrast_first, one, brightness)).clamp_(0, 255)  # x 1.0 is exact: a no-op
    x = x.mul_(contrast).add_(_gray_mean(x) * (1 - contrast)).clamp_(0, 255)  # (x - mean) * c + mean
    return x.mul_(torch.where(contrast_first, brightness, one)).clamp_(0, 255)


def _cutout_holes(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[n,h,w] True inside each view's rectangle: `area` of the view, aspect exp(log_ratio), inside it."""
    n = len(p)
    area, ratio = p[:, C["area"]] * h * w, p[:, C["log_ratio"]].exp()
    eh = (area * ratio).sqrt().round().clamp(1, h - 1).view(n, 1, 1)
    ew = (area / ratio).sqrt().round().clamp(1, w - 1).view(n, 1, 1)
    top = (p[:, C["top"]].view(n, 1, 1) * (h - eh + 1)).floor()
    left = (p[:, C["left"]].view(n, 1, 1) * (w - ew + 1)).floor()
    rows = torch.arange(h, device=p.device, dtype=p.dtype).view(1, h, 1)
    cols = torch.arange(w, device=p.device, dtype=p.dtype).view(1, 1, w)
    return (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)


def _on_chosen(x: torch.Tensor, p: torch.Tensor, column: str, step) -> torch.Tensor:
    """`step` on the views whose `column` is set (all of them at once when all are)."""
    chosen = p[:, C[column]].bool()
    if chosen.all():
        return step(x, p)
    if chosen.any():
        x[chosen] = step(x[chosen], p[chosen])
    return x


class BatchAugment:
    """uint8 [B,3,S,S] views after `per_image` and their parameter rows [B,len(COLUMNS)] -> the
    normalised float training batch, on the batch's device."""

    def __init__(self, preprocess: EvalPreprocess):
        self.preprocess = cpu_copy(preprocess)

    @torch.no_grad()
    def __call__(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.preprocess.mean.device != views.device:
            self.preprocess = self.preprocess.to(views.device)
        if views.device.type != "cpu" or len(views) <= CPU_CHUNK:
            return self._augment(views, rows)
        out = torch.empty(views.shape, dtype=torch.float32)
        for i in range(0, len(views), CPU_CHUNK):  # every step is per view: chunks give the same bytes
            out[i : i + CPU_CHUNK] = self._augment(views[i : i + CPU_CHUNK], rows[i : i + CPU_CHUNK])
        return out

    def _augment(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        p = rows.to(views.device)
        x = _on_chosen(views, p, "affine", _affine).float()
        x = _on_chosen(x, p, "color", _color)
        # RGB shift and cutout on every view, with no offset and no hole where not chosen (exact no-ops)
        offsets = p[:, [C["r"], C["g"], C["b"]]] * p[:, C["rgb"] : C["rgb"] + 1]
        x = x.add_(offsets.float().view(-1, 3, 1, 1)).clamp_(0, 255)
        holes = _cutout_holes(p, x.shape[-2], x.shape[-1]) & p[:, C["cutout"]].bool().view(-1, 1, 1)
        x = x.masked_fill_(holes.unsqueeze(1), 0.0)
        return self.preprocess.normalize(x)
