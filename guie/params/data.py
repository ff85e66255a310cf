"""The `data:` section: the sources `guie download` materialises, the manifest's split rules and
the caps on unpacking archives."""

from __future__ import annotations

import posixpath
import re
import string
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from guie.params.fields import STRICT, Fraction


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
    __pydantic_config__ = STRICT
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
    path: str  # absolute, or relative to the project root (not the root itself)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path.strip() or posixpath.normpath(self.path.strip()) == ".":
            raise ValueError(
                f"path {self.path!r} is the project root, which holds every other source's images; "
                "name the folder that holds this source's images"
            )


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


ImageSetSource = FolderSource | UrlSource | KaggleDatasetSource | KaggleCompetitionSource


@dataclass(frozen=True)
class ManifestParams:
    """How the `manifest` stage splits each train source's classes (class-disjoint, seeded by `seed`):
    split `heldout` (scored by `evaluate`), split `selection` (for choosing weight-soup ingredients)
    and split `train`; no class is in two of them and only `train` is ever trained on."""

    __pydantic_config__ = STRICT
    heldout_fraction: Fraction = 0.3  # share of each train source's classes held out (class-disjoint) for evaluation
    min_image_side: Annotated[int, Field(ge=1)] = 32  # smaller images carry no instance detail at 224 px
    # At most this many held-out classes over all train sources together (an LB-sized slice, so a real
    # recipe does not lose heldout_fraction of its data); each source keeps its share of the fraction's
    # counts (guie/stages/manifest.py: `_proportional`). 0 = no cap.
    heldout_max_classes: Annotated[int, Field(ge=0)] = 0
    # Share of each train source's classes put in split `selection`: never trained on, not reported as
    # held out; the set a weight soup picks its ingredients on. 0 = no selection split.
    selection_fraction: Fraction = 0.0
    selection_max_classes: Annotated[int, Field(ge=0)] = 0  # cap over all train sources, like heldout_max_classes

    def __post_init__(self) -> None:
        # pydantic reports this at the section ("data.manifest: <message>"): both keys are in the message
        if self.heldout_fraction + self.selection_fraction >= 1:
            raise ValueError(
                f"heldout_fraction ({self.heldout_fraction:g}) + selection_fraction ({self.selection_fraction:g}) "
                "must be < 1: the rest of each train source's classes is what trains"
            )


@dataclass(frozen=True)
class DownloadParams:
    """Caps on what one archive may unpack to (decompression bombs), checked while it is written."""

    __pydantic_config__ = STRICT
    # all members of one archive together (GLDv2 unpacks to ~100 GiB)
    max_unpacked_gib: Annotated[float, Field(gt=0)] = 200.0
    max_member_gib: Annotated[float, Field(gt=0)] = 20.0  # any one member
    # unpacked / compressed bytes: per zip member, over the whole file for a tar; judged past 1 MiB
    max_compression_ratio: Annotated[float, Field(ge=1)] = 200.0
    min_free_gib: Annotated[float, Field(ge=0)] = 1.0  # disk left free on data/raw's file system after every member


@dataclass(frozen=True)
class DataParams:
    __pydantic_config__ = STRICT
    sources: tuple[Source, ...]
    manifest: ManifestParams = field(default_factory=ManifestParams)
    download: DownloadParams = field(default_factory=DownloadParams)  # caps for `guie download`'s unpacking
