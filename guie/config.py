"""Typed pipeline parameters: `params.yaml` is loaded once, validated strictly, into frozen dataclasses.

Validation happens before any work starts, so a typo in a key fails in a second, not after an
hour of training. Unknown keys, wrong types and missing sections are errors naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from guie.contract import EMBEDDING_DIMS
from guie.errors import GuieError
from guie.kaggle.settings import KaggleParams

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)  # `.inf` / `.nan` are never a sensible setting

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

# The competition's maximum embedding size: the exported model must output at most this many dims.
COMPETITION_MAX_DIMS = EMBEDDING_DIMS
# At most this many values after YAML aliases are expanded (the default params.yaml has ~200): a
# few nested aliases in a 1 KB file ("billion laughs") would otherwise expand to billions.
MAX_YAML_VALUES = 100_000


def _bounds(
    ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> AfterValidator:
    """A range check whose message states the whole allowed range, e.g. "must be in [1, 64]"
    (`_format_errors` adds the key and the value given)."""
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else ""
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else ""
    if low and high:
        allowed = f"in {low}, {high}"
    elif low:
        allowed = (">= " if ge is not None else "> ") + low[1:]
    else:
        allowed = ("<= " if le is not None else "< ") + high[:-1]

    def check(value: float) -> float:
        too_low = (ge is not None and value < ge) or (gt is not None and value <= gt)
        too_high = (le is not None and value > le) or (lt is not None and value >= lt)
        if too_low or too_high:
            raise ValueError(f"must be {allowed}")
        return value

    return AfterValidator(check)


Count = Annotated[int, _bounds(ge=1)]  # sizes, counts, steps: at least 1
PositiveFloat = Annotated[float, _bounds(gt=0.0)]  # learning rates, scales
Fraction = Annotated[float, _bounds(ge=0.0, lt=1.0)]  # a share that must leave something: [0, 1)
# 0 epochs is allowed on purpose: `train.finetune.epochs: 0` exports the stage-1 model (an ablation),
# and `train.head.epochs: 0` fine-tunes from the fresh head; negative counts are refused.
Epochs = Annotated[int, _bounds(ge=0)]
Margin = Annotated[float, _bounds(ge=0.0, lt=math.pi / 2)]


def _source_name(value: str) -> str:
    # the name becomes the directory data/raw/<name>/ and the prefix of every class label
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError("use letters, digits, '_', '-' and '.' only (it names the directory data/raw/<name>/)")
    return value


_TEMPLATE_FIELD = re.compile(r"[A-Za-z_]\w*(\[\d+\])*")


def _template(value: str) -> str:
    # "{column}" / "{id[0]}" placeholders only: the fields are CSV columns or path parts, not Python
    try:
        fields_ = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as err:
        raise ValueError(f"not a valid template: {err}") from None
    bad = [f for f in fields_ if not _TEMPLATE_FIELD.fullmatch(f)]
    if bad:
        raise ValueError(f"placeholders must be names like {{label}} or {{id[0]}}, got {{{bad[0]}}}")
    return value


SourceName = Annotated[str, AfterValidator(_source_name)]
Template = Annotated[str, AfterValidator(_template)]


@dataclass(frozen=True, kw_only=True)
class _SourceBase:
    __pydantic_config__ = _STRICT
    name: SourceName
    role: Literal["train", "pca"] = "train"  # train: labelled instances; pca: the PCA fitting set (used whole)
    # The seeds' class rules, applied to train sources (a PCA set is used whole):
    min_images_per_class: Annotated[int, Field(ge=1)] = 3  # drop classes with fewer usable images
    max_images_per_class: Annotated[int, Field(ge=1)] = 50  # subsample bigger classes to this many
    max_classes: Annotated[int, Field(ge=0)] = 0  # keep at most this many classes (drawn by class_seed); 0 = all
    class_seed: int = 0  # which classes and images the caps keep

    def __post_init__(self) -> None:
        if self.max_images_per_class < self.min_images_per_class:
            raise ValueError("max_images_per_class must be >= min_images_per_class")


@dataclass(frozen=True, kw_only=True)
class SyntheticSource(_SourceBase):
    """A deterministic instance-level image set generated on the fly (the embedded default)."""

    type: Literal["synthetic"]
    seed: int = 0  # a different seed gives different instances
    domains: tuple[str, ...] = ("apparel", "artwork", "cars", "dishes", "landmark")
    # checked by `generate_synthetic` (guie/data/synthetic.py) before the first image is written
    instances_per_domain: int = 40
    views_per_instance: int = 6
    min_side: int = 96  # views get odd sizes and aspect ratios between these sides
    max_side: int = 320


@dataclass(frozen=True, kw_only=True)
class _ImageSetSource(_SourceBase):
    """Real images in a directory tree; class and domain come from folders or a CSV.

    Templates fill {placeholders} from the image's path parts (file: its path under root, dir: its
    folder's path, parent: its folder's name, top: its first folder) and, with a CSV, the row's
    columns (which win on a name clash). A template without placeholders is a fixed value.
    """

    domain: Template  # e.g. landmark (fixed), or {parent} / {top} (a folder name), or {category} (a CSV column)
    root: str = ""  # sub-directory holding the images (e.g. an archive's top folder); "" = the whole source
    csv: str = ""  # "" = every image file under root; else a CSV (relative to root) with one row per image
    csv_delimiter: str = ","
    image: Template = "{image_name}"  # with a CSV: the image's path under root, from the row's columns
    label: Template = ""  # the class; "" = {dir} (the image's folder), or {label} with a CSV
    homepage: str = ""  # where the data comes from
    terms: str = ""  # licence and terms of use, printed when the source is downloaded

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.csv_delimiter) != 1:
            raise ValueError(f"csv_delimiter must be one character, got {self.csv_delimiter!r}")


@dataclass(frozen=True, kw_only=True)
class FolderSource(_ImageSetSource):
    """An existing directory, read in place (never copied)."""

    type: Literal["folder"]
    path: str  # absolute, or relative to the project root


@dataclass(frozen=True, kw_only=True)
class UrlSource(_ImageSetSource):
    """An archive (zip, tar, tar.gz, tar.bz2, tar.xz) or a single file, fetched and unpacked."""

    type: Literal["url"]
    url: str  # http(s)://... or file://...
    sha256: str = ""  # required for http(s): the download is verified against it

    def __post_init__(self) -> None:
        super().__post_init__()
        scheme = self.url.split(":", 1)[0].lower() if ":" in self.url else ""
        if scheme not in ("http", "https", "file"):
            raise ValueError(f"url must start with http://, https:// or file://, got {self.url!r}")
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if scheme != "file" and not self.sha256:
            raise ValueError("sha256 is required for http(s) URLs (run `sha256sum` on a trusted copy)")


@dataclass(frozen=True, kw_only=True)
class KaggleDatasetSource(_ImageSetSource):
    """A Kaggle dataset, downloaded with your Kaggle credentials."""

    type: Literal["kaggle_dataset"]
    dataset: str  # owner/slug
    file: str = ""  # one file of the dataset; "" = all of it


@dataclass(frozen=True, kw_only=True)
class KaggleCompetitionSource(_ImageSetSource):
    """A Kaggle competition's data (its rules must be accepted on Kaggle first)."""

    type: Literal["kaggle_competition"]
    competition: str  # slug, e.g. landmark-recognition-2021
    files: tuple[str, ...] = ()  # some of its files; () = all of it


def _expand_preset(entry: object) -> object:
    from guie.data.presets import expand_preset

    return expand_preset(entry)


# `{preset: <name>, ...overrides}` entries expand first (guie/data/presets.py)
Source = Annotated[
    SyntheticSource | FolderSource | UrlSource | KaggleDatasetSource | KaggleCompetitionSource,
    Field(discriminator="type"),
    BeforeValidator(_expand_preset),
]
ImageSetSource = Union[FolderSource, UrlSource, KaggleDatasetSource, KaggleCompetitionSource]


@dataclass(frozen=True)
class ManifestParams:
    __pydantic_config__ = _STRICT
    heldout_fraction: Fraction = 0.3  # share of each train source's classes held out (class-disjoint) for evaluation
    min_image_side: Annotated[int, Field(ge=1)] = 32  # smaller images carry no instance detail at 224 px


@dataclass(frozen=True)
class DownloadParams:
    """Caps on what one archive may unpack to (decompression bombs), checked while it is written."""

    __pydantic_config__ = _STRICT
    max_unpacked_gib: Annotated[float, Field(gt=0)] = (
        200.0  # all members of one archive together (GLDv2 unpacks to ~100 GiB)
    )
    max_member_gib: Annotated[float, Field(gt=0)] = 20.0  # any one member
    max_compression_ratio: Annotated[float, Field(ge=1)] = (
        200.0  # unpacked / compressed bytes: per zip member, over the whole file for a tar; judged past 1 MiB
    )
    min_free_gib: Annotated[float, Field(ge=0)] = 1.0  # disk left free on data/raw's file system after every member


@dataclass(frozen=True)
class DataParams:
    __pydantic_config__ = _STRICT
    sources: tuple[Source, ...]
    manifest: ManifestParams = field(default_factory=ManifestParams)
    download: DownloadParams = field(default_factory=DownloadParams)  # caps for `guie download`'s unpacking


@dataclass(frozen=True)
class PreprocessParams:
    """The eval preprocessing shared by training, embedding, evaluation and the exported model."""

    __pydantic_config__ = _STRICT
    image_size: Annotated[int, _bounds(ge=16, le=4096)] = (
        224  # < 16 px keeps no detail; > 4096 px is a typo that would fill RAM
    )
    resize: Literal["squash", "shortest_side_crop"] = "squash"  # squash: the 6th-place paper's resize


@dataclass(frozen=True)
class ModelParams:
    __pydantic_config__ = _STRICT
    name: str = "guie-tiny-vit"  # an open_clip model name (ViT-H-14 for the real recipe)
    pretrained: str = ""  # open_clip tag or checkpoint path; "" = seeded random init written by `guie weights`
    head_dim: Count = 256  # BN -> Dropout -> Linear(tower dim -> head_dim); >= pca.dims (checked in parse_params)
    dropout: Fraction = 0.2  # 1 would zero every feature


@dataclass(frozen=True)
class LossParams:
    """Sub-center ArcFace with per-class dynamic margins (GLR 2020 3rd-place formula)."""

    __pydantic_config__ = _STRICT
    subcenters: Count = 3
    scale: PositiveFloat = 30.0
    # cos(theta + m) stays monotonic in theta only for m < pi/2; margin_min <= margin_max (parse_params)
    margin_min: Margin = 0.05  # margin of the most frequent class
    margin_max: Margin = 0.5  # margin of the rarest class (0.45 + 0.05 in the authors' code)
    margin_power: float = -0.25  # t_c = n_c ** power


@dataclass(frozen=True)
class HeadStageParams:
    __pydantic_config__ = _STRICT
    epochs: Epochs = 5
    lr: PositiveFloat = 1e-4
    # The frozen tower runs once per image and view; the head then trains on those features.
    # 0 = run the tower on every batch, with fresh augmentations each epoch.
    cached_views: Annotated[int, Field(ge=0)] = 1


@dataclass(frozen=True)
class FinetuneStageParams:
    __pydantic_config__ = _STRICT
    epochs: Epochs = 4
    lr_backbone: PositiveFloat = 1e-7
    lr_head: PositiveFloat = 1e-4
    unfreeze_from: Annotated[int, _bounds(ge=0)] = (
        15  # resblocks from this index to the end are trained (upper bound: the tower's depth, checked when it loads)
    )


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


@dataclass(frozen=True)
class AugmentParams:
    """The paper's training augmentations, applied in this order; a probability of 0 turns one off."""

    __pydantic_config__ = _STRICT
    hflip: Probability = 0.5  # horizontal flip
    jpeg: Probability = 0.5  # re-compress as JPEG (test images are JPEGs of all qualities)
    jpeg_quality: tuple[Annotated[int, Field(ge=1, le=100)], Annotated[int, Field(ge=1, le=100)]] = (
        50,
        95,
    )  # drawn uniformly
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
    cutout_area: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = (
        0.02,
        0.15,
    )  # its share of the image


@dataclass(frozen=True)
class TrainParams:
    __pydantic_config__ = _STRICT
    batch_size: Annotated[int, _bounds(ge=2)] = (
        32  # the global batch: >= 2 (the head's BatchNorm), divisible by processes (parse_params)
    )
    num_workers: Annotated[int, _bounds(ge=0)] = (
        0  # DataLoader workers; 0 decodes in the training process; results do not depend on it
    )
    cache_images: bool = (
        True  # keep resized uint8 images that are revisited in RAM (~150 KB each) when they fit (train.image_caches)
    )
    checkpoint_every: Annotated[int, Field(ge=0)] = 0  # also checkpoint every this many steps (0 = at epoch ends only)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when a GPU is visible
    precision: Literal["auto", "fp32", "bf16", "fp16"] = (
        "auto"  # auto: bf16 on GPUs that have it, else loss-scaled fp16; fp32 on CPU
    )
    channels_last: bool = True  # CUDA only: channels-last images and patch embedding
    processes: Annotated[int, Field(ge=1)] = 1  # processes on this machine, one per GPU; > 1 launches torchrun (DDP)
    sync_every: Annotated[int, Field(ge=1)] = (
        50  # GPU: check the loss for NaN/inf every N steps (a host sync); CPU checks every step
    )
    augment: AugmentParams = field(default_factory=AugmentParams)
    head: HeadStageParams = field(default_factory=HeadStageParams)
    finetune: FinetuneStageParams = field(default_factory=FinetuneStageParams)


@dataclass(frozen=True)
class PcaParams:
    __pydantic_config__ = _STRICT
    dims: Annotated[int, _bounds(ge=1, le=COMPETITION_MAX_DIMS)] = (
        COMPETITION_MAX_DIMS  # the competition's maximum embedding size
    )
    whiten: bool = False
    batch_size: Count = 64  # images embedded per forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where the PCA set (and evaluate's zero-shot baseline) is embedded


@dataclass(frozen=True)
class ExportParams:
    __pydantic_config__ = _STRICT
    device: Literal["cpu", "cuda"] = (
        "cpu"  # where the artifact's weights live; cuda for big towers (the scorer has a GPU)
    )
    half: bool = False  # float16 tower (needs device: cuda; torch 1.11 has no float16 CPU kernels)


@dataclass(frozen=True)
class EvaluateParams:
    __pydantic_config__ = _STRICT
    k: Count = 5
    queries_per_class: Count = 1  # the rest of each held-out class goes to the index
    bootstrap: Annotated[int, _bounds(ge=2)] = (
        1000  # resamples for the standard error of mP@5 (one resample has no spread)
    )


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

    def artifact_hash(self) -> str:
        """The hash of every param that shapes submission.zip (recorded in export.json and submissions);
        run knobs and `data.download` (caps on unpacking) shape nothing, so they are left out (and not read)."""
        skip = RUN_KNOBS | {"data.download"}
        payload = {
            name: shaping_values(getattr(self, name), name, skip)
            for name in ("data", "preprocess", "model", "loss", "train", "pca", "export")
        }
        payload["seed"] = self.seed
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shaping_values(section: object, prefix: str, skip: frozenset[str] | set[str]) -> object:
    """`asdict(section)` without the dotted keys in `skip`, reading only the fields it keeps."""
    if isinstance(section, (list, tuple)):
        return [shaping_values(item, prefix, skip) for item in section]
    if not dataclasses.is_dataclass(section):
        return section
    return {
        f.name: shaping_values(getattr(section, f.name), f"{prefix}.{f.name}", skip)
        for f in dataclasses.fields(section)
        if f"{prefix}.{f.name}" not in skip
    }


_ADAPTER = TypeAdapter(Params)
_SOURCE_TYPES = {"synthetic", "folder", "url", "kaggle_dataset", "kaggle_competition"}


_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        # drop pydantic's discriminator tags from the path: data.sources.0.seed, not ...0.synthetic.seed
        parts = e["loc"]
        loc = ".".join(
            str(p) for i, p in enumerate(parts) if not (p in _SOURCE_TYPES and i and isinstance(parts[i - 1], int))
        )
        kind = e["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"  {loc}: unknown key")
            continue
        if kind == "missing":
            lines.append(f"  {loc}: missing key or section")
            continue
        if kind in _BOUND_WORDS:  # pydantic's own Field(ge=...) bounds, worded like _bounds
            msg = f"must be {_BOUND_WORDS[kind]} {next(iter(e['ctx'].values()))}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if not isinstance(value, dict):  # a whole section's input says nothing; its message names the fields
            shown = repr(value)
            msg += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _cross_field_errors(p: Params) -> list[str]:
    """Rules between keys, each naming both keys and their values."""
    train, aug, errors = p.train, p.train.augment, []
    if train.batch_size % train.processes:
        errors.append(
            f"train.batch_size ({train.batch_size}) must be divisible by train.processes ({train.processes}): "
            "each process takes an equal share of the global batch"
        )
    if p.pca.dims > p.model.head_dim:
        errors.append(
            f"pca.dims ({p.pca.dims}) must be <= model.head_dim ({p.model.head_dim}): PCA cannot output more dims than the head"
        )
    if p.loss.margin_min > p.loss.margin_max:
        errors.append(f"loss.margin_min ({p.loss.margin_min:g}) must be <= loss.margin_max ({p.loss.margin_max:g})")
    for key, (low, high) in (("jpeg_quality", aug.jpeg_quality), ("cutout_area", aug.cutout_area)):
        if low > high:
            errors.append(f"train.augment.{key} ([{low:g}, {high:g}]) must be [low, high] with low <= high")
    if p.export.half and p.export.device == "cpu":
        errors.append(
            "export.half (true) needs export.device: cuda (got cpu): torch 1.11, the scorer's, has no float16 CPU kernels"
        )
    return errors


def parse_params(raw: object, path: Path = Path("params.yaml")) -> Params:
    if not isinstance(raw, dict):
        raise GuieError(f"{path}: expected a mapping of sections at the top level")
    try:
        params = _ADAPTER.validate_python(raw)
    except ValidationError as err:
        raise GuieError(_format_errors(path, err)) from None
    crossed = _cross_field_errors(params)
    if crossed:
        raise GuieError("\n".join([f"{path}: invalid parameters", *(f"  {line}" for line in crossed)]))
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
    return parse_params(read_yaml(path), path)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus two refusals before any object is built: a key given twice in
    one mapping (PyYAML keeps the last silently) and aliases that expand past a limit."""

    def checked_data(self, path: Path, limit: int) -> object:
        node = self.get_single_node()
        if node is None:
            return None
        self._check(path, node, limit)
        return self.construct_document(node)

    def _check(self, path: Path, root: yaml.Node, limit: int) -> None:
        """One pass over the composed node graph (an alias is the same node object again, so the
        graph is small even when its expansion is not): each node's expanded size is computed once
        from its children's, so a billion-laughs file is refused after visiting its few dozen nodes."""
        sizes: dict[int, int] = {}
        expanding: set[int] = set()
        stack: list[tuple[yaml.Node, bool, str]] = [(root, False, "")]
        while stack:
            node, children_done, where = stack.pop()
            if children_done:
                expanding.discard(id(node))
                sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
                if sizes[id(node)] > limit:
                    raise GuieError(
                        f"{path}: {where or 'the document'} holds over {limit:,} values once YAML aliases are expanded "
                        "(an alias bomb?); parameters need a few hundred: write them out instead of nesting aliases"
                    )
                continue
            if id(node) in sizes:
                continue
            if id(node) in expanding:
                raise GuieError(
                    f"{path}:{node.start_mark.line + 1}: a YAML alias refers to its own anchor ({where}); remove the recursion"
                )
            expanding.add(id(node))
            stack.append((node, True, where))
            if not isinstance(node, yaml.MappingNode):
                stack += [
                    (child, False, f"{where}.{i}" if where else str(i)) for i, child in enumerate(_children(node))
                ]
                continue
            seen: dict[object, int] = {}
            for key_node, value_node in node.value:
                name = where
                if key_node.tag != "tag:yaml.org,2002:merge" and isinstance(
                    key_node, yaml.ScalarNode
                ):  # `<<:` merges may override
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    name = f"{where}.{key}" if where else str(key)
                    if key in seen:
                        raise GuieError(f"{path}:{line}: duplicate key {name} (first at line {seen[key]}); keep one")
                    seen[key] = line
                stack += [(key_node, False, name), (value_node, False, name)]


def read_yaml(path: Path, limit: int = MAX_YAML_VALUES) -> object:
    """A YAML file's data, refusing duplicate keys and alias expansions past `limit` values."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GuieError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    loader = _ParamsLoader(text)
    try:
        return loader.checked_data(path, limit)
    except yaml.YAMLError as err:
        raise GuieError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise GuieError(f"{path}: YAML nested too deeply to read; flatten it") from None
    finally:
        loader.dispose()
