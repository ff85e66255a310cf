"""The manifest table: one row per usable image, the single input training, PCA and evaluation read.

Columns: path (relative to the project root; absolute for a folder source outside it), sha256,
source, domain, label (global class name, "<source>/<class>"), split (train | heldout | pca),
width, height. Written by the `manifest` stage (guie/stages/manifest.py).
"""

from __future__ import annotations

import csv
import io
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from guie.atomic import write_text
from guie.errors import GuieError


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


def table_text(rows: list, path: Path) -> str:
    """`rows` (dataclasses) as CSV with a header; `path` names the table in the refusal of an empty one."""
    if not rows:
        raise GuieError(f"{path}: refusing to write an empty table")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([f.name for f in fields(rows[0])])
    writer.writerows(astuple(r) for r in rows)
    return buf.getvalue()


def write_table(rows: list, path: Path) -> None:
    write_text(path, table_text(rows, path))


def read_manifest(path: Path) -> list[ManifestRow]:
    if not path.is_file():
        raise GuieError(f"{path}: manifest not found; run `dvc repro manifest` (or `guie manifest`) first")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        expected = [f.name for f in fields(ManifestRow)]
        if reader.fieldnames != expected:
            raise GuieError(
                f"{path}: unexpected columns {reader.fieldnames}; expected {expected}. Re-run `guie manifest`."
            )
        return [ManifestRow(**{**r, "width": int(r["width"]), "height": int(r["height"])}) for r in reader]
