"""List a source's candidate images with their class and domain, before any image is opened.

Two layouts: folders (every image file under the root; class = its folder by default) or a CSV
with one row per image (the 130k set's `train.csv`, Products-10K's, GLDv2's). Paths in the
manifest are relative to the project root, or absolute for a folder source outside it.
File names that are not valid UTF-8 are rejected here: the manifest is UTF-8 text and a path
that cannot be written there cannot be read back either.
"""

from __future__ import annotations

import csv
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from guie.errors import GuieError
from guie.params.data import FolderSource, ImageSetSource, SyntheticSource

# The raster formats a folder's files are taken in: the ones Pillow (the host's decoder) reads by
# itself. A GIF is its first frame and a TIFF its first page, as the host's `convert("RGB")` sees them.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)


def _other_image_suffixes() -> frozenset[str]:
    """Extensions Pillow knows that guie does not take (.psd, .eps, .ico, .h5, ...): such files are
    listed as rejected, never skipped silently, and never decoded or hashed (some are videos or data)."""
    from PIL import Image

    return frozenset(Image.registered_extensions()) - IMAGE_SUFFIXES


@dataclass(frozen=True)
class Candidate:
    path: str  # as the manifest writes it
    source: str
    domain: str
    label: str  # global class name, "<source>/<class>"


@dataclass(frozen=True)
class Rejection:
    path: str
    source: str
    reason: str  # "<category>: <detail>"; reports count by category


def manifest_path(path: Path, project_root: Path) -> str:
    try:
        return path.relative_to(project_root).as_posix()
    except ValueError:
        return path.as_posix()


def printable(path: str) -> str:
    """A path as UTF-8 text: undecodable bytes shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.walk decodes bad bytes to surrogates
        return False
    return True


def source_dir(source: SyntheticSource | ImageSetSource, raw_root: Path, project_root: Path) -> Path:
    """Where a source lives: its folder (read in place, never copied) or data/raw/<name>/."""
    if isinstance(source, FolderSource):
        return Path(os.path.normpath(project_root / source.path))
    return raw_root / source.name


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """Paths (relative, posix) under root, sorted: every image file, and every file of a format
    Pillow knows but guie does not take."""
    found, others, other_suffixes = [], [], _other_image_suffixes()
    for here, dirs, files in os.walk(root):
        dirs.sort()
        rel_dir = Path(here).relative_to(root).as_posix()
        for name in files:
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_SUFFIXES or suffix in other_suffixes:
                (found if suffix in IMAGE_SUFFIXES else others).append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return sorted(found), sorted(others)


def _path_fields(rel: str) -> dict[str, str]:
    parts = rel.split("/")
    folder = "/".join(parts[:-1])
    return {
        "file": rel,
        "dir": folder,
        "parent": parts[-2] if len(parts) > 1 else "",
        "top": parts[0] if len(parts) > 1 else "",
    }


def _fill(template: str, fields: dict[str, str], source: ImageSetSource, key: str, csv_path: Path | None) -> str:
    try:
        return template.format(**fields)
    except KeyError as err:
        known = ", ".join(sorted(fields))
        where = f" nor a column of {csv_path}" if csv_path else ""
        raise GuieError(
            f"data.sources[{source.name}].{key}: {{{err.args[0]}}} is not a path field "
            f"(file, dir, parent, top){where}; "
            f"available: {known}"
        ) from None
    except IndexError:
        raise ValueError(f"{key} template {template!r} does not fit this row") from None


def _synthetic(source: SyntheticSource, root: Path, project_root: Path) -> tuple[list[Candidate], list[Rejection]]:
    out = []
    for rel in _walk(root)[0]:
        domain, cls = rel.split("/")[:2]
        out.append(Candidate(manifest_path(root / rel, project_root), source.name, domain, f"{source.name}/{cls}"))
    return out, []


def _from_folders(source: ImageSetSource, root: Path, project_root: Path) -> tuple[list[Candidate], list[Rejection]]:
    out, rejected = [], []
    label = source.label or "{dir}"
    images, others = _walk(root)
    for rel in others:
        rejected.append(
            Rejection(
                printable(manifest_path(root / rel, project_root)),
                source.name,
                f"unsupported format: {Path(rel).suffix.lower()} (guie takes {', '.join(sorted(IMAGE_SUFFIXES))})",
            )
        )
    for rel in images:
        shown = manifest_path(root / rel, project_root)
        if not _utf8(rel):
            rejected.append(Rejection(printable(shown), source.name, "non-UTF-8 file name: rename the file"))
            continue
        candidate = _candidate(source, shown, _path_fields(rel), label, None, rejected)
        if candidate is not None:
            out.append(candidate)
    return out, rejected


def _candidate(
    source: ImageSetSource,
    shown: str,
    fields: dict[str, str],
    label_template: str,
    csv_path: Path | None,
    rejected: list,
) -> Candidate | None:
    try:
        label = _fill(label_template, fields, source, "label", csv_path).strip()
        domain = _fill(source.domain, fields, source, "domain", csv_path).strip()
    except ValueError as err:
        rejected.append(Rejection(shown, source.name, f"no class: {err}"))
        return None
    if not label:
        rejected.append(
            Rejection(shown, source.name, f"no class: label template {label_template!r} gives nothing here")
        )
        return None
    if not domain:
        rejected.append(
            Rejection(shown, source.name, f"no domain: domain template {source.domain!r} gives nothing here")
        )
        return None
    return Candidate(shown, source.name, domain, f"{source.name}/{label}")


def _from_csv(source: ImageSetSource, root: Path, project_root: Path) -> tuple[list[Candidate], list[Rejection]]:
    csv_path = root / source.csv
    if not csv_path.is_file():
        raise GuieError(f"data.sources[{source.name}].csv: {csv_path} not found; check `csv` and `root`")
    shown_csv = manifest_path(csv_path, project_root)
    out, rejected, first_line = [], [], {}
    label = source.label or "{label}"
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            for line, row in enumerate(csv.DictReader(f, delimiter=source.csv_delimiter), start=2):
                columns = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
                where = f"{shown_csv}:{line}"
                try:
                    rel = _fill(source.image, columns, source, "image", csv_path)
                except ValueError as err:
                    rejected.append(Rejection(where, source.name, f"bad row: {err}"))
                    continue
                rel = posixpath.normpath(rel.replace("\\", "/")) if rel else ""
                if not rel or rel.startswith(("/", "../")) or rel == "..":
                    rejected.append(
                        Rejection(where, source.name, f"bad row: image path {rel!r} is empty or leaves the source root")
                    )
                    continue
                shown = manifest_path(root / rel, project_root)
                if rel in first_line:
                    rejected.append(
                        Rejection(shown, source.name, f"listed twice: {shown_csv} lines {first_line[rel]} and {line}")
                    )
                    continue
                first_line[rel] = line
                candidate = _candidate(source, shown, {**_path_fields(rel), **columns}, label, csv_path, rejected)
                if candidate is not None:
                    out.append(candidate)
    except UnicodeDecodeError as err:
        raise GuieError(f"{csv_path}: not UTF-8 text ({err}); convert it to UTF-8") from None
    except csv.Error as err:
        raise GuieError(f"{csv_path}: not a readable CSV ({err})") from None
    return out, rejected


def list_candidates(
    source: SyntheticSource | ImageSetSource, raw_root: Path, project_root: Path
) -> tuple[list[Candidate], list[Rejection]]:
    """Candidates sorted by path, and the files rejected before opening them."""
    base = source_dir(source, raw_root, project_root)
    if not base.is_dir():
        raise GuieError(
            f"data.sources[{source.name}]: {base} is not a directory; run `guie download` to check the source"
        )
    root = base / source.root if not isinstance(source, SyntheticSource) and source.root else base
    if not root.is_dir():
        top = sorted(p.name for p in base.iterdir() if not p.name.startswith("."))[:10]
        raise GuieError(f"data.sources[{source.name}].root: {root} not found; the source's top level holds {top}")
    if isinstance(source, SyntheticSource):
        found, rejected = _synthetic(source, root, project_root)
    elif source.csv:
        found, rejected = _from_csv(source, root, project_root)
    else:
        found, rejected = _from_folders(source, root, project_root)
    return sorted(found, key=lambda c: c.path), rejected
