"""The `manifest` stage: one table of every usable image, the single input training reads.

Columns: path (relative to the project root; absolute for a folder source outside it), sha256,
source, domain, label (global class name, "<source>/<class>"), split (train | heldout | selection |
pca), width, height. Held-out classes (scored by `evaluate`) and selection classes (for choosing
weight-soup ingredients; only with data.manifest.selection_fraction) are class-disjoint from
training and from each other; the split is seeded so the same params give the same table.

Every image is decoded the way the host decodes it (`Image.open(p).convert("RGB")`, EXIF
orientation NOT applied, so width and height are the stored ones) in worker processes. A file
that cannot be used goes to rejected.csv with a reason ("<category>: <detail>"); one bad file
never stops the stage. Exact duplicates (same bytes) are kept once, the first in source order.
Train sources get the seeds' class rules: classes with fewer than min_images_per_class usable
images are rejected, at most max_classes classes and max_images_per_class images per class are
kept (seeded; only a window a little bigger than the cap is decoded). Images left out by those
caps are counted, not listed: they are fine, just not chosen.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from guie.atomic import atomic_paths, writable_dir, write_text
from guie.data.candidates import Candidate, Rejection, list_candidates
from guie.data.image_check import init_worker, inspect_args
from guie.data.manifest import ManifestRow, table_text
from guie.errors import GuieError
from guie.progress import console, progress_bar

if TYPE_CHECKING:
    from guie.params.load import Params


def _by_label(items: list) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for item in items:
        groups[(item[0] if isinstance(item, tuple) else item).label].append(item)
    return groups


def _window(source) -> int:
    """How many of a class's images to decode: the cap plus a margin for files that get rejected."""
    return source.max_images_per_class + source.max_images_per_class // 4 + 2


def _preselect(source, candidates: list[Candidate], rejected: list[Rejection]) -> tuple[list[Candidate], int]:
    """Before decoding anything: reject classes that cannot reach the minimum, draw max_classes,
    and keep a seeded window of each big class (GLDv2 has classes of thousands of images).
    Returns the candidates to decode and how many were left out."""
    groups = _by_label(candidates)
    eligible = []
    for label in sorted(groups):
        if len(groups[label]) < source.min_images_per_class:
            why = f"rare class: {len(groups[label])} images (min_images_per_class is {source.min_images_per_class})"
            rejected += [Rejection(c.path, c.source, why) for c in groups[label]]
        else:
            eligible.append(label)
    chosen = eligible
    if source.max_classes and len(eligible) > source.max_classes:
        chosen = sorted(random.Random(source.class_seed).sample(eligible, source.max_classes))
    kept: list[Candidate] = []
    for label in chosen:
        items = groups[label]
        if len(items) > _window(source):
            items = random.Random(f"{source.class_seed}/{label}").sample(items, _window(source))
        kept += items
    return sorted(kept, key=lambda c: c.path), len(candidates) - len(kept) - sum(
        len(groups[g]) for g in set(groups) - set(eligible)
    )


def _cap_classes(source, accepted: list[tuple], rejected: list[Rejection]) -> tuple[list[tuple], int]:
    """After decoding: reject classes left below the minimum, subsample big ones (seeded per class)."""
    kept, left_out = [], 0
    groups = _by_label(accepted)
    for label in sorted(groups):
        items = groups[label]
        if len(items) < source.min_images_per_class:
            why = f"rare class: {len(items)} usable images (min_images_per_class is {source.min_images_per_class})"
            rejected += [Rejection(c.path, c.source, why) for c, _ in items]
            continue
        if len(items) > source.max_images_per_class:
            left_out += len(items) - source.max_images_per_class
            rng = random.Random(f"{source.class_seed}/{label}")  # stable when other classes change
            items = sorted(rng.sample(items, source.max_images_per_class), key=lambda it: it[0].path)
        kept += items
    return kept, left_out


def _proportional(counts: dict[str, int], cap: int) -> dict[str, int]:
    """`counts` (classes per source, in params order) scaled down to `cap` classes in all when they
    sum to more (0 = no cap). Largest remainders: each source gets floor(cap * count / total), and
    the classes still short of `cap` go one each to the sources with the largest remainders
    (cap * count mod total), ties to the source listed first. The shares sum to exactly `cap`, none
    exceeds its count, and a source whose share rounds to nothing gets none."""
    total = sum(counts.values())
    if not cap or total <= cap:
        return dict(counts)
    shares = {name: cap * n // total for name, n in counts.items()}
    by_remainder = sorted(counts, key=lambda name: -(cap * counts[name] % total))  # stable: ties keep params order
    for name in by_remainder[: cap - sum(shares.values())]:
        shares[name] += 1
    return shares


def _assign_splits(params: Params, kept: list[Candidate]) -> dict[str, str]:
    """Class-disjoint split. Each train source's classes are shuffled once (one seeded generator,
    sources in params order): the first round(n * heldout_fraction) are held out, the last
    round(n * selection_fraction) go to selection, the rest train. heldout_max_classes and
    selection_max_classes cap those counts over all train sources together (`_proportional`), so a
    capped held-out set is a subset of the uncapped one, and the two caps never move each other's
    classes. A source left with no training class is refused."""
    m = params.data.manifest
    rng = random.Random(params.seed)
    splits: dict[str, str] = {}
    shuffled: dict[str, list[str]] = {}
    for source in params.data.sources:
        labels = sorted({c.label for c in kept if c.source == source.name})
        if source.role == "pca":
            splits.update({label: "pca" for label in labels})
            continue
        rng.shuffle(labels)
        shuffled[source.name] = labels
    n_heldout = _proportional(
        {name: round(len(labels) * m.heldout_fraction) for name, labels in shuffled.items()}, m.heldout_max_classes
    )
    n_selection = _proportional(
        {name: round(len(labels) * m.selection_fraction) for name, labels in shuffled.items()}, m.selection_max_classes
    )
    for name, labels in shuffled.items():
        first_selection = len(labels) - n_selection[name]
        if first_selection <= n_heldout[name]:
            raise GuieError(
                f"data.sources[{name}]: its {len(labels)} classes leave no training class: {n_heldout[name]} held out "
                f"(data.manifest.heldout_fraction {m.heldout_fraction:g}) and {n_selection[name]} for selection "
                f"(data.manifest.selection_fraction {m.selection_fraction:g}); lower the fractions or give the "
                "source more classes"
            )
        for i, label in enumerate(labels):
            splits[label] = "heldout" if i < n_heldout[name] else "selection" if i >= first_selection else "train"
    return splits


def _validate(paths: list[str], min_side: int, workers: int) -> list[tuple[str, int, int, str]]:
    if not paths:
        return []
    chunksize = max(1, min(64, len(paths) // (workers * 4)))
    out = []
    with ProcessPoolExecutor(workers, initializer=init_worker, initargs=(os.getpid(),)) as pool:
        # map submits everything, which forks the workers now, before the progress bar's thread starts
        results = pool.map(inspect_args, [(p, min_side) for p in paths], chunksize=chunksize)
        with progress_bar("validating images", len(paths)) as advance:
            for r in results:
                out.append(r)
                advance(1)
    return out


def _category(reason: str) -> str:
    return reason.split(":")[0]


def _print_report(per_source: dict[str, dict]) -> None:
    table = Table(title="manifest by source")
    for col in ("source", "kept", "left out by caps", "rejected"):
        table.add_column(col)
    for name, info in per_source.items():
        reasons = ", ".join(f"{n} {cat}" for cat, n in sorted(info["rejected"].items())) or "-"
        table.add_row(name, str(info["kept"]), str(info["left_out"]), reasons)
    console.print(table)


def _gather(
    params: Params, project_root: Path, raw_root: Path, rejected: list[Rejection], left_out: Counter
) -> list[Candidate]:
    """Every source's candidate files, train sources preselected (`_preselect`); what is refused
    goes to `rejected`, what the caps leave out is counted in `left_out`."""
    if raw_root.exists() and not raw_root.is_dir():
        raise GuieError(f"manifest: {raw_root} is a file, not a folder; move or delete it, then run `guie download`")
    candidates: list[Candidate] = []
    for source in params.data.sources:
        if not (raw_root / source.name).is_dir():
            raise GuieError(
                f"{raw_root / source.name}: source {source.name!r} not downloaded; "
                "run `dvc repro download` (or `guie download`) first"
            )
        found, early = list_candidates(source, raw_root, project_root)
        rejected += early
        if source.role == "train":
            found, left_out[source.name] = _preselect(source, found, rejected)
        candidates += found
    return candidates


def _accept(
    candidates: list[Candidate], results: list[tuple[str, int, int, str]], rejected: list[Rejection]
) -> tuple[dict[str, list[tuple]], int]:
    """The decoded candidates per source, each with (sha256, width, height), and how many were exact
    duplicates of an earlier one; the rest go to `rejected` with their reason."""
    accepted: dict[str, list[tuple]] = defaultdict(list)
    seen: dict[str, str] = {}
    duplicates = 0
    for cand, (digest, width, height, reason) in zip(candidates, results, strict=True):
        if not reason and digest in seen:
            duplicates += 1
            reason = f"duplicate: same bytes as {seen[digest]}"
        if reason:
            rejected.append(Rejection(cand.path, cand.source, reason))
            continue
        seen[digest] = cand.path
        accepted[cand.source].append((cand, (digest, width, height)))
    return accepted, duplicates


def _apply_caps(
    params: Params, accepted: dict[str, list[tuple]], rejected: list[Rejection], left_out: Counter
) -> list[tuple]:
    kept: list[tuple] = []
    for source in params.data.sources:
        items = accepted[source.name]
        if source.role == "train":
            items, capped = _cap_classes(source, items, rejected)
            left_out[source.name] += capped
        kept += items
    return kept


def _rejected_text(rejected: list[Rejection]) -> str:
    """`rejected` sorted, as CSV."""
    rejected.sort(key=lambda r: (r.path, r.source, r.reason))
    rej_buf = io.StringIO()
    writer = csv.writer(rej_buf, lineterminator="\n")
    writer.writerow(["path", "source", "reason"])
    writer.writerows(astuple(r) for r in rejected)
    return rej_buf.getvalue()


def _per_source(params: Params, kept: list[tuple], left_out: Counter, rejected: list[Rejection]) -> dict[str, dict]:
    return {
        s.name: {
            "kept": sum(1 for c, _ in kept if c.source == s.name),
            "left_out": left_out[s.name],
            "rejected": Counter(_category(r.reason) for r in rejected if r.source == s.name),
        }
        for s in params.data.sources
    }


def _require_images(per_source: dict[str, dict], rejected_csv: Path) -> None:
    """Refuse a source none of whose images was kept, saying why they were rejected."""
    for name, info in per_source.items():
        if not info["kept"]:
            why = ", ".join(f"{n} {cat}" for cat, n in sorted(info["rejected"].items())) or "no image files found"
            raise GuieError(
                f"data.sources[{name}]: no usable images ({why}); see {rejected_csv} and check the "
                "source's layout (root, csv, image, label)"
            )


def _manifest_rows(params: Params, kept: list[tuple]) -> list[ManifestRow]:
    splits = _assign_splits(params, [c for c, _ in kept])
    return [
        ManifestRow(c.path, digest, c.source, c.domain, c.label, splits[c.label], width, height)
        for c, (digest, width, height) in sorted(kept, key=lambda it: it[0].path)
    ]


# bytes a manifest or rejected.csv row takes besides its path and names (sha256, split, sizes, reason)
_ROW_BYTES = 160


def _tables_size(candidates: list[Candidate], rejected: list[Rejection]) -> int:
    """About how many bytes the two tables take: every candidate lands in one of them."""
    rows = sum(len(c.path) + len(c.label) + len(c.source) + len(c.domain) for c in candidates)
    rows += sum(len(r.path) + len(r.source) + len(r.reason) for r in rejected)
    return rows + _ROW_BYTES * (len(candidates) + len(rejected)) + 4096


def build_manifest(
    params: Params, project_root: Path, raw_root: Path, manifest: Path, rejected_csv: Path, workers: int | None = None
) -> dict:
    """Scan the sources under raw_root, validate every image, write the `manifest` and `rejected_csv`
    tables; returns a report. Manifest paths are relative to project_root."""
    rejected: list[Rejection] = []
    left_out: Counter = Counter()
    candidates = _gather(params, project_root, raw_root, rejected, left_out)

    need = _tables_size(candidates, rejected)
    for out_dir in dict.fromkeys((manifest.parent, rejected_csv.parent)):
        writable_dir(out_dir, "manifest", need)  # before an hour of decoding, not after
    workers = workers or len(os.sched_getaffinity(0))
    paths = [str(project_root / c.path) for c in candidates]  # an absolute c.path stays as it is
    results = _validate(paths, params.data.manifest.min_image_side, workers)

    accepted, duplicates = _accept(candidates, results, rejected)
    kept = _apply_caps(params, accepted, rejected, left_out)
    rejected_text = _rejected_text(rejected)

    per_source = _per_source(params, kept, left_out, rejected)
    _print_report(per_source)
    try:
        _require_images(per_source, rejected_csv)
        rows = _manifest_rows(params, kept)
    except GuieError:
        write_text(rejected_csv, rejected_text)  # the message sends the user there
        raise
    # both tables or neither: a disk that fills on the second leaves the old pair as it was
    with atomic_paths(manifest, rejected_csv) as (manifest_tmp, rejected_tmp):
        manifest_tmp.write_text(table_text(rows, manifest), encoding="utf-8")
        rejected_tmp.write_text(rejected_text, encoding="utf-8")
    return {
        "images": len(rows),
        "classes": len({r.label for r in rows}),
        "by_split": dict(sorted(Counter(r.split for r in rows).items())),
        "by_source": {name: info["kept"] for name, info in per_source.items()},
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(_category(r.reason) for r in rejected).items())),
        "duplicates": duplicates,
        "left_out_by_caps": sum(left_out.values()),
        **_selection_report(rows),
    }


def _selection_report(rows: list[ManifestRow]) -> dict[str, int]:
    """The selection split's size, when there is one (the report is unchanged without it)."""
    selection = [r for r in rows if r.split == "selection"]
    if not selection:
        return {}
    return {"selection_classes": len({r.label for r in selection}), "selection_images": len(selection)}
