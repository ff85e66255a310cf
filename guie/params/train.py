"""The `train:` section: the chain of training stages, the augmentations, and the run knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from guie.params.fields import STRICT, Epochs, ImageSide, PositiveFloat, Probability, Seed, bounds
from guie.params.loss import LossParams

# Speed, memory and logging knobs: they cannot change any output (`train.processes`: within float
# tolerance), so no stage declares them in dvc.yaml and no artifact hash covers them; changing one
# never re-runs a stage (tests/test_dvc_params.py).
RUN_KNOBS = frozenset(
    {
        "train.num_workers",
        "train.prepared_store",
        "train.augment_on",
        "train.checkpoint_every",
        "train.processes",
        "train.sync_every",
        "train.channels_last",
    }
)

MAX_CACHED_VIEWS = 64  # a million (a typo) would embed every image a million times

# what a first stage starts `from:` (the `weights` stage's output, models/backbone.pt)
BACKBONE = "backbone"


@dataclass(frozen=True)
class IngredientParams:
    """One run of a soup stage: the stage's settings with another seed and/or augmentations."""

    __pydantic_config__ = STRICT
    seed: Seed = 0  # added to the stage's seed
    # overrides of train.augment for this run, e.g. {hflip: 0.0, cutout: 0.5} (keys and values
    # checked against train.augment's)
    augment: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SoupParams:
    """Train the stage once per ingredient and average the runs' weights (Wortsman et al. 2022)."""

    __pydantic_config__ = STRICT
    ingredients: tuple[IngredientParams, ...]  # at least two, no two alike
    # uniform: all runs; greedy: best first on the manifest's selection split, then each next-best
    # run only if the soup's selection mP@5 does not drop (needs data.manifest.selection_fraction)
    method: Literal["uniform", "greedy"] = "uniform"


@dataclass(frozen=True)
class StageParams:
    """One training stage: what it starts from, what trains, how, and on which data.

    Image size and patch stride left unset (null) are those of the stage it starts from (a first
    stage's: preprocess.image_size and model.patch_stride); when they change, the position
    embedding is resized from the input checkpoint's grid. The last stage's define the artifact."""

    __pydantic_config__ = STRICT
    # `backbone` (the weights stage's tower with a fresh head) or an earlier stage's name
    from_: Annotated[str, Field(alias="from")]
    epochs: Epochs
    image_size: ImageSide | None = None  # [16, 4096], as preprocess.image_size
    patch_stride: Annotated[int, bounds(ge=0)] | None = None  # 0 = the patch size
    tower: Literal["frozen", "blocks", "all"] = "frozen"  # blocks: resblocks from unfreeze_from on, and what follows
    unfreeze_from: Annotated[int, bounds(ge=0)] | None = None  # with tower: blocks (upper bound: the depth)
    head: Literal["train", "frozen"] = "train"  # frozen: head and margin head keep their weights and statistics
    lr_head: PositiveFloat = 1e-4  # head and margin head
    lr_backbone: PositiveFloat = 1e-7  # the last block and what follows it
    # layer-wise decay (timm's): what follows the blocks gets lr_backbone, block i of n
    # lr_backbone * lr_decay ** (n - i), the embeddings lr_backbone * lr_decay ** (n + 1)
    lr_decay: Annotated[float, bounds(gt=0.0, le=1.0)] = 1.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: Annotated[float, bounds(ge=0.0, lt=1.0)] = 0.9  # sgd only
    # on weight matrices only (open_clip's rule): not on biases, norms, embeddings or logit scales
    weight_decay: Annotated[float, bounds(ge=0.0)] = 0.0
    schedule: Literal["constant", "cosine"] = "constant"  # over the stage's steps, after the warm-up
    warmup_steps: Annotated[int, bounds(ge=0)] = 0  # linear from 0 to the learning rates
    # frozen tower: run it once per image and view; the head trains on those features. 0 = run the
    # tower on every batch, with fresh augmentations each epoch. Ignored when the tower trains. Each
    # view is a tower pass over the data, and epoch e trains on view e mod cached_views (views past
    # `epochs` are never used): at most MAX_CACHED_VIEWS
    cached_views: Annotated[int, bounds(ge=0, le=MAX_CACHED_VIEWS)] = 1
    sources: tuple[str, ...] = ()  # the train sources this stage trains on; () = all of them
    # the margin head's class weights from the input stage: keep (same classes), extend (keep the
    # shared classes', initialise new ones) or reinit (all fresh); a first stage starts fresh
    margin_head: Literal["keep", "extend", "reinit"] = "keep"
    loss: LossParams = field(default_factory=LossParams)
    soup: SoupParams | None = None  # train the stage several times and average the runs
    # WiSE-FT (Wortsman et al. 2022): the mixing coefficients alpha to try, each giving weights
    # (1 - alpha) * start + alpha * trained; the best on the selection split is the stage's model
    # (needs data.manifest.selection_fraction). () = the trained weights as they are
    wise_ft: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = ()

    @property
    def tower_trains(self) -> bool:
        return self.tower != "frozen"

    @property
    def head_trains(self) -> bool:
        return self.head == "train"


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
    # the chain: stage name -> its entry, in order; each starts `from:` backbone or an earlier one.
    # DVC runs one pipeline stage per entry (`train@<name>`, declaring only train.stages.<name>).
    stages: dict[str, StageParams]
    final: str  # the stage whose model is exported: the last entry (dvc.yaml's pca and export read it)
    # the global batch: >= 2 (the head's BatchNorm), divisible by processes (parse_params)
    batch_size: Annotated[int, bounds(ge=2)] = 32
    # DataLoader workers; 0 decodes in the training process; results do not depend on it
    num_workers: Annotated[int, bounds(ge=0)] = 0
    # decode and resize each image once into the prepared-image store (data/prepared/, memory-mapped,
    # 3*S*S bytes per image: ~150 KB at 224 px); false: decode the originals every epoch
    prepared_store: bool = True
    # where the batched augmentations run: auto = on the GPU when training there (uint8 batches cross the
    # bus), else in the loader; loader | device force one (same views up to float rounding)
    augment_on: Literal["auto", "loader", "device"] = "auto"
    checkpoint_every: Annotated[int, Field(ge=0)] = 0  # also checkpoint every this many steps (0 = at epoch ends only)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when a GPU is visible
    # auto: bf16 on GPUs that have it, else loss-scaled fp16; fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # CUDA only: channels-last images and patch embedding
    processes: Annotated[int, Field(ge=1)] = 1  # processes on this machine, one per GPU; > 1 launches torchrun (DDP)
    # GPU: check the loss for NaN/inf every N steps (a host sync); CPU checks every step
    sync_every: Annotated[int, Field(ge=1)] = 50
    augment: AugmentParams = field(default_factory=AugmentParams)
