"""The `manifest` stage: one table of every usable image, the single input training reads.

Columns: path (relative to the project root), sha256, source, domain, label (global class name,
"<source>/<class>"), split (train | heldout | pca), width, height. Held-out classes are
class-disjoint from training; the split is seeded so the same params give the same table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from PIL import Image

from guie.atomic import write_text
from guie.config import Params, SyntheticSource
from guie.errors import GuieError
from guie.progress import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class ManifestRow:
    path: str
    sha256: str
    source: str
    domain: str
    label: str
    split: str
    width: int
    height: int


@dataclass(frozen=True)
class Candidate:
    path: str
    source: str
    domain: str
    label: str


def _synthetic_candidates(source: SyntheticSource, root: Path, project_root: Path) -> list[Candidate]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            domain, cls = p.relative_to(root).parts[:2]
            out.append(Candidate(p.relative_to(project_root).as_posix(), source.name, domain, f"{source.name}/{cls}"))
    return out


_LISTERS = {SyntheticSource: _synthetic_candidates}


def _inspect(args: tuple[str, str]) -> tuple[str, int, int, str]:
    """Decode one file as the host would; returns (sha256, width, height, reject reason)."""
    project_root, rel = args
    try:
        data = Path(project_root, rel).read_bytes()
    except OSError as err:
        return "", 0, 0, f"unreadable: {err.strerror}"
    if not data:
        return "", 0, 0, "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
            rgb.load()
            width, height = rgb.size
    except Exception as err:  # PIL raises many types for corrupt input
        return "", 0, 0, f"undecodable: {type(err).__name__}"
    return hashlib.sha256(data).hexdigest(), width, height, ""


def write_table(rows: list, path: Path) -> None:
    if not rows:
        raise GuieError(f"{path}: refusing to write an empty table")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([f.name for f in fields(rows[0])])
    writer.writerows(astuple(r) for r in rows)
    write_text(path, buf.getvalue())


def read_manifest(path: Path) -> list[ManifestRow]:
    if not path.is_file():
        raise GuieError(f"{path}: manifest not found; run `dvc repro manifest` (or `guie manifest`) first")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        expected = [f.name for f in fields(ManifestRow)]
        if reader.fieldnames != expected:
            raise GuieError(f"{path}: unexpected columns {reader.fieldnames}; expected {expected}. Re-run `guie manifest`.")
        return [ManifestRow(**{**r, "width": int(r["width"]), "height": int(r["height"])}) for r in reader]


def _assign_splits(params: Params, accepted: list[Candidate]) -> dict[str, str]:
    """Class-disjoint split: a seeded share of the train sources' classes is held out."""
    roles = {s.name: s.role for s in params.data.sources}
    train_labels = sorted({c.label for c in accepted if roles[c.source] == "train"})
    rng = random.Random(params.seed)
    shuffled = train_labels[:]
    rng.shuffle(shuffled)
    n_heldout = round(len(shuffled) * params.data.manifest.heldout_fraction)
    heldout = set(shuffled[:n_heldout])
    splits = {label: ("heldout" if label in heldout else "train") for label in train_labels}
    splits.update({c.label: "pca" for c in accepted if roles[c.source] == "pca"})
    return splits


def build_manifest(params: Params, project_root: Path, out_dir: Path, workers: int | None = None) -> dict:
    """Scan data/raw, validate every image, write manifest.csv, rejected.csv and a report."""
    raw_root = project_root / "data" / "raw"
    candidates: list[Candidate] = []
    for source in params.data.sources:
        root = raw_root / source.name
        if not root.is_dir():
            raise GuieError(f"{root}: source {source.name!r} not downloaded; run `dvc repro download` (or `guie download`) first")
        candidates += _LISTERS[type(source)](source, root, project_root)

    workers = workers or min(4, os.cpu_count() or 1)
    results = []
    with progress_bar("validating images", len(candidates)) as advance, ProcessPoolExecutor(workers) as pool:
        for r in pool.map(_inspect, [(str(project_root), c.path) for c in candidates], chunksize=64):
            results.append(r)
            advance(1)

    accepted: list[tuple[Candidate, tuple]] = []
    rejected: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    duplicates = 0
    for cand, (digest, width, height, reason) in zip(candidates, results):
        if not reason and digest in seen:
            duplicates += 1
            reason = f"duplicate of {seen[digest]}"
        if reason:
            rejected.append((cand.path, cand.source, reason))
            continue
        seen[digest] = cand.path
        accepted.append((cand, (digest, width, height)))

    # per-class caps from the seeds: drop rare classes, subsample big ones (seeded); the PCA set
    # is used without labels, so its images are all kept
    m = params.data.manifest
    roles = {s.name: s.role for s in params.data.sources}
    by_label: dict[str, list] = defaultdict(list)
    for item in accepted:
        by_label[item[0].label].append(item)
    kept: list[tuple[Candidate, tuple]] = []
    rng = random.Random(params.seed)
    for label in sorted(by_label):
        items = by_label[label]
        if roles[items[0][0].source] == "pca":
            kept += items
            continue
        if len(items) < m.min_images_per_class:
            rejected += [(c.path, c.source, f"class has {len(items)} < {m.min_images_per_class} images") for c, _ in items]
            continue
        if len(items) > m.max_images_per_class:
            items = sorted(rng.sample(items, m.max_images_per_class), key=lambda it: it[0].path)
        kept += items

    for source in params.data.sources:
        if not any(c.source == source.name for c, _ in kept):
            raise GuieError(f"data.sources[{source.name}]: no usable images (see {out_dir / 'rejected.csv'})")

    splits = _assign_splits(params, [c for c, _ in kept])
    rows = [
        ManifestRow(c.path, digest, c.source, c.domain, c.label, splits[c.label], width, height)
        for c, (digest, width, height) in sorted(kept, key=lambda it: it[0].path)
    ]
    write_table(rows, out_dir / "manifest.csv")
    rej_buf = io.StringIO()
    w = csv.writer(rej_buf, lineterminator="\n")
    w.writerow(["path", "source", "reason"])
    w.writerows(sorted(rejected))
    write_text(out_dir / "rejected.csv", rej_buf.getvalue())

    split_counts = Counter(r.split for r in rows)
    return {
        "images": len(rows),
        "classes": len({r.label for r in rows}),
        "by_split": dict(sorted(split_counts.items())),
        "by_source": dict(sorted(Counter(r.source for r in rows).items())),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(r[2].split(":")[0] for r in rejected).items())),
        "duplicates": duplicates,
    }
