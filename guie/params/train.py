"""The `train:` section: both training stages, their augmentations, and the run knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

from guie.params.fields import STRICT, Epochs, PositiveFloat, Probability, bounds

# Speed, memory and logging knobs: they cannot change any output (`train.processes`: within float
# tolerance), so no stage declares them in dvc.yaml and no artifact hash covers them; changing one
# never re-runs a stage (tests/test_dvc_params.py).
RUN_KNOBS = frozenset(
    {
        "train.num_workers",
        "train.cache_images",
        "train.checkpoint_every",
        "train.processes",
        "train.sync_every",
        "train.channels_last",
    }
)


@dataclass(frozen=True)
class HeadStageParams:
    __pydantic_config__ = STRICT
    epochs: Epochs = 5
    lr: PositiveFloat = 1e-4
    # The frozen tower runs once per image and view; the head then trains on those features.
    # 0 = run the tower on every batch, with fresh augmentations each epoch.
    cached_views: Annotated[int, Field(ge=0)] = 1


@dataclass(frozen=True)
class FinetuneStageParams:
    __pydantic_config__ = STRICT
    epochs: Epochs = 4
    lr_backbone: PositiveFloat = 1e-7
    lr_head: PositiveFloat = 1e-4
    # resblocks from this index to the end are trained (upper bound: the tower's depth, checked when it loads)
    unfreeze_from: Annotated[int, bounds(ge=0)] = 15


@dataclass(frozen=True)
class AugmentParams:
    """The paper's training augmentations, applied in this order; a probability of 0 turns one off."""

    __pydantic_config__ = STRICT
    hflip: Probability = 0.5  # horizontal flip
    jpeg: Probability = 0.5  # re-compress as JPEG (test images are JPEGs of all qualities)
    # drawn uniformly
    jpeg_quality: tuple[Annotated[int, Field(ge=1, le=100)], Annotated[int, Field(ge=1, le=100)]] = (50, 95)
    affine: Probability = 1.0  # shift/scale/rotate
    shift: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1  # at most this fraction of the side, each axis
    scale: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2  # zoom drawn in [1 - scale, 1 + scale]
    rotate: Annotated[float, Field(ge=0.0, le=180.0)] = 15.0  # degrees either way
    brightness_contrast: Probability = 1.0  # random brightness and contrast
    brightness: Annotated[float, Field(ge=0.0)] = 0.3  # factor drawn in [1 - b, 1 + b]
    contrast: Annotated[float, Field(ge=0.0)] = 0.3  # factor drawn in [1 - c, 1 + c]
    rgb_shift: Probability = 0.3  # add one random offset per channel
    rgb_shift_limit: Annotated[int, Field(ge=0, le=255)] = 15  # offsets drawn in [-limit, limit] of 0..255
    cutout: Probability = 0.3  # zero one random rectangle
    # its share of the image
    cutout_area: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = (0.02, 0.15)


@dataclass(frozen=True)
class TrainParams:
    __pydantic_config__ = STRICT
    # the global batch: >= 2 (the head's BatchNorm), divisible by processes (parse_params)
    batch_size: Annotated[int, bounds(ge=2)] = 32
    # DataLoader workers; 0 decodes in the training process; results do not depend on it
    num_workers: Annotated[int, bounds(ge=0)] = 0
    # keep resized uint8 images that are revisited in RAM (~150 KB each) when they fit (train.image_caches)
    cache_images: bool = True
    checkpoint_every: Annotated[int, Field(ge=0)] = 0  # also checkpoint every this many steps (0 = at epoch ends only)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when a GPU is visible
    # auto: bf16 on GPUs that have it, else loss-scaled fp16; fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # CUDA only: channels-last images and patch embedding
    processes: Annotated[int, Field(ge=1)] = 1  # processes on this machine, one per GPU; > 1 launches torchrun (DDP)
    # GPU: check the loss for NaN/inf every N steps (a host sync); CPU checks every step
    sync_every: Annotated[int, Field(ge=1)] = 50
    augment: AugmentParams = field(default_factory=AugmentParams)
    head: HeadStageParams = field(default_factory=HeadStageParams)
    finetune: FinetuneStageParams = field(default_factory=FinetuneStageParams)
