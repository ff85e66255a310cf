"""How many images each split holds: counted from the manifest when it exists, else estimated from
the params (synthetic sources exactly, presets from their published sizes and the class rules)."""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from guie.params.data import SyntheticSource

if TYPE_CHECKING:
    from guie.params.load import Params

# Published sizes of the presets' sources (images, classes) before guie's class rules, for plans
# made before `guie manifest` has counted them. gldv2: landmark-recognition-2021's train.csv;
# products10k: its train.csv; stanford-online-products: Ebay_train.txt; food101: 101 x 1000;
# fashion200k and storefronts146: their mirrors' folders, approximately; guie-130k: its name.
PRESET_SIZES: dict[str, tuple[int, int]] = {
    "gldv2": (1_580_470, 81_313),
    "products10k": (141_931, 9_691),
    "stanford-online-products": (59_551, 11_318),
    "fashion200k": (201_624, 72_000),
    "food101": (101_000, 101),
    "storefronts146": (14_600, 146),
    "guie-130k": (130_000, 11),
}
SAMPLE = 12  # training images whose loading the plan times


@dataclass(frozen=True)
class ImageCounts:
    train: dict[str, int]  # per train source
    classes: dict[str, int]  # training classes per train source
    heldout: int
    selection: int
    pca: int
    exact: bool  # counted from the manifest
    sample: list[str] = field(default_factory=list)  # paths of a seeded sample of training images
    unknown: list[str] = field(default_factory=list)  # sources of unknown size (counted as 0)

    def train_images(self, sources: tuple[str, ...] = ()) -> int:
        return sum(n for s, n in self.train.items() if not sources or s in sources)

    def train_classes(self, sources: tuple[str, ...] = ()) -> int:
        return sum(n for s, n in self.classes.items() if not sources or s in sources)

    @property
    def describe(self) -> str:
        if self.exact:
            return "image counts from the manifest"
        text = "image counts estimated from the params (no manifest yet: `guie manifest` counts them)"
        return text + (f"; unknown size, counted as 0: {', '.join(self.unknown)}" if self.unknown else "")


def from_manifest(path: Path, seed: int = 0) -> ImageCounts:
    """Counts per split (and per source for training), reading only the columns needed."""
    train, labels, splits, paths = Counter(), {}, Counter(), []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            split = row["split"]
            splits[split] += 1
            if split == "train":
                train[row["source"]] += 1
                labels.setdefault(row["source"], set()).add(row["label"])
                paths.append(row["path"])
    sample = random.Random(seed).sample(paths, min(SAMPLE, len(paths)))
    classes = {s: len(v) for s, v in labels.items()}
    return ImageCounts(dict(train), classes, splits["heldout"], splits["selection"], splits["pca"], True, sample)


def _source_size(source) -> tuple[int, int] | None:
    if isinstance(source, SyntheticSource):
        return len(source.domains) * source.instances_per_domain * source.views_per_instance, (
            len(source.domains) * source.instances_per_domain
        )
    return PRESET_SIZES.get(source.name)


def from_params(params: Params) -> ImageCounts:
    """Estimated counts: each train source's classes capped by max_classes, its images per class by
    max_images_per_class (at the source's mean), then the held-out and selection shares of classes
    (capped over all sources: classes over a cap train instead)."""
    rules = params.data.manifest
    kept, per_class, pca, unknown = {}, {}, 0, []
    for source in params.data.sources:
        size = _source_size(source)
        if size is None:
            unknown.append(source.name)
            continue
        images, n_classes = size
        if source.role == "pca":
            pca += images
            continue
        kept[source.name] = min(n_classes, source.max_classes or n_classes)
        per_class[source.name] = min(images / n_classes, source.max_images_per_class)
    held = _split(kept, rules.heldout_fraction, rules.heldout_max_classes)
    sel = _split(kept, rules.selection_fraction, rules.selection_max_classes)
    classes = {s: round(kept[s] - held[s] - sel[s]) for s in kept}
    train = {s: round(classes[s] * per_class[s]) for s in kept}
    heldout = round(sum(held[s] * per_class[s] for s in kept))
    selection = round(sum(sel[s] * per_class[s] for s in kept))
    return ImageCounts(train, classes, heldout, selection, pca, False, [], unknown)


def _split(kept: dict[str, int], fraction: float, cap: int) -> dict[str, float]:
    """Classes of each source in a split taking `fraction` of every source's classes, at most `cap` in all."""
    chosen = {s: n * fraction for s, n in kept.items()}
    total = sum(chosen.values())
    scale = cap / total if cap and total > cap else 1.0
    return {s: n * scale for s, n in chosen.items()}


def manifest_sources(path: Path) -> set[str]:
    with path.open(newline="") as f:
        return {row["source"] for row in csv.DictReader(f)}


def counts(params: Params, manifest: Path) -> ImageCounts:
    """From the manifest when it lists exactly the params' sources (else it belongs to other params)."""
    names = {s.name for s in params.data.sources}
    if manifest.is_file() and manifest_sources(manifest) == names:
        return from_manifest(manifest, params.seed)
    return from_params(params)
