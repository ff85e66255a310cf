"""Typed pipeline parameters: `params.yaml` is loaded once, validated strictly, into frozen dataclasses.

Validation happens before any work starts, so a typo in a key fails in a second, not after an
hour of training. Unknown keys, wrong types and missing sections are errors naming the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from guie.errors import GuieError
from guie.kaggle.settings import KaggleParams

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class SyntheticSource:
    """A deterministic instance-level image set generated on the fly (the embedded default)."""

    __pydantic_config__ = _STRICT
    name: str
    type: Literal["synthetic"]
    role: Literal["train", "pca"] = "train"  # train: labelled instances; pca: the PCA fitting set
    seed: int = 0  # a different seed gives different instances
    domains: tuple[str, ...] = ("apparel", "artwork", "cars", "dishes", "landmark")
    instances_per_domain: int = 40
    views_per_instance: int = 6
    min_side: int = 96  # views get odd sizes and aspect ratios between these sides
    max_side: int = 320


Source = Annotated[Union[SyntheticSource], Field(discriminator="type")]


@dataclass(frozen=True)
class ManifestParams:
    __pydantic_config__ = _STRICT
    heldout_fraction: float = 0.3  # share of classes held out (class-disjoint) for evaluation
    min_images_per_class: int = 3  # the seeds dropped classes with fewer images
    max_images_per_class: int = 50  # the seeds capped classes at ~50 images


@dataclass(frozen=True)
class DataParams:
    __pydantic_config__ = _STRICT
    sources: tuple[Source, ...]
    manifest: ManifestParams = field(default_factory=ManifestParams)


@dataclass(frozen=True)
class PreprocessParams:
    """The eval preprocessing shared by training, embedding, evaluation and the exported model."""

    __pydantic_config__ = _STRICT
    image_size: int = 224
    resize: Literal["squash", "shortest_side_crop"] = "squash"  # squash: the 6th-place paper's resize


@dataclass(frozen=True)
class ModelParams:
    __pydantic_config__ = _STRICT
    name: str = "guie-tiny-vit"  # an open_clip model name (ViT-H-14 for the real recipe)
    pretrained: str = ""  # open_clip tag or checkpoint path; "" = seeded random init written by `guie weights`
    head_dim: int = 256  # BN -> Dropout -> Linear(tower dim -> head_dim)
    dropout: float = 0.2


@dataclass(frozen=True)
class LossParams:
    """Sub-center ArcFace with per-class dynamic margins (GLR 2020 3rd-place formula)."""

    __pydantic_config__ = _STRICT
    subcenters: int = 3
    scale: float = 30.0
    margin_min: float = 0.05  # margin of the most frequent class
    margin_max: float = 0.5  # margin of the rarest class (0.45 + 0.05 in the authors' code)
    margin_power: float = -0.25  # t_c = n_c ** power


@dataclass(frozen=True)
class HeadStageParams:
    __pydantic_config__ = _STRICT
    epochs: int = 5
    lr: float = 1e-4


@dataclass(frozen=True)
class FinetuneStageParams:
    __pydantic_config__ = _STRICT
    epochs: int = 4
    lr_backbone: float = 1e-7
    lr_head: float = 1e-4
    unfreeze_from: int = 15  # resblocks from this index to the end are trained


@dataclass(frozen=True)
class TrainParams:
    __pydantic_config__ = _STRICT
    batch_size: int = 32
    num_workers: int = 0  # DataLoader workers; 0 decodes in the training process
    cache_images: bool = True  # keep resized uint8 images in RAM across epochs (~150 KB each); off for big sets
    head: HeadStageParams = field(default_factory=HeadStageParams)
    finetune: FinetuneStageParams = field(default_factory=FinetuneStageParams)


@dataclass(frozen=True)
class PcaParams:
    __pydantic_config__ = _STRICT
    dims: int = 64  # the competition's maximum embedding size
    whiten: bool = False
    batch_size: int = 64  # images embedded per forward pass


@dataclass(frozen=True)
class ExportParams:
    __pydantic_config__ = _STRICT
    device: Literal["cpu", "cuda"] = "cpu"


@dataclass(frozen=True)
class EvaluateParams:
    __pydantic_config__ = _STRICT
    k: int = 5
    queries_per_class: int = 1  # the rest of each held-out class goes to the index
    bootstrap: int = 1000  # resamples for the standard error of mP@5


@dataclass(frozen=True)
class Params:
    __pydantic_config__ = _STRICT
    seed: int
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    loss: LossParams
    train: TrainParams
    pca: PcaParams
    export: ExportParams
    evaluate: EvaluateParams
    kaggle: KaggleParams = field(default_factory=KaggleParams)  # `guie submit`; slugs default from the username

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some sections, recorded in artifacts to tie them to their params."""
        payload = {name: asdict(getattr(self, name)) if name != "seed" else self.seed for name in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


_ADAPTER = TypeAdapter(Params)
_SOURCE_TYPES = {"synthetic"}


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        # drop pydantic's discriminator tags from the path: data.sources.0.seed, not ...0.synthetic.seed
        loc = ".".join(str(p) for p in e["loc"] if p not in _SOURCE_TYPES)
        kind = e["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key"
        elif kind == "missing":
            msg = "missing key or section"
        else:
            msg = f"{e['msg']} (got {e.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_params(raw: object, path: Path = Path("params.yaml")) -> Params:
    if not isinstance(raw, dict):
        raise GuieError(f"{path}: expected a mapping of sections at the top level")
    try:
        params = _ADAPTER.validate_python(raw)
    except ValidationError as err:
        raise GuieError(_format_errors(path, err)) from None
    names = [s.name for s in params.data.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GuieError(f"{path}: data.sources: duplicate source name(s) {dupes}")
    if not any(s.role == "train" for s in params.data.sources):
        raise GuieError(f"{path}: data.sources: no source with role 'train'")
    if not any(s.role == "pca" for s in params.data.sources):
        raise GuieError(f"{path}: data.sources: no source with role 'pca' (the PCA fitting set)")
    return params


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise GuieError(f"{path}: parameters file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GuieError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, path)
