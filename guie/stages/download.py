"""The `download` stage: materialise every configured data source under data/raw/<name>/.

Each source type has one function that fills a fresh staging directory, data/raw/.guie-staging.*;
it is renamed into place only when complete, so an interrupted download never leaves a
half-filled source behind. A run killed outright (SIGKILL, power loss) cannot clean up: the
next run deletes the staging folders it left (guie's own names only, never anything else); one
download runs at a time per project (an flock on data/raw), so it never deletes a live one's.

- synthetic: generated.
- folder: read in place, never copied; data/raw/<name>/folder.json records the folder's path
  and a fingerprint of its listing, so DVC re-runs the manifest when the folder changes.
- url, kaggle_dataset, kaggle_competition: fetched into the download cache data/downloads/<name>/
  (kept, so re-running the stage only unpacks again), then unpacked safely into data/raw/<name>/.

A source's licence and terms are printed before it is fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from rich.text import Text

from guie.atomic import writable_dir, write_text
from guie.data.archive import extract_archive, is_archive
from guie.data.candidates import source_dir
from guie.errors import GuieError, os_error
from guie.params.data import (
    DownloadParams,
    FolderSource,
    KaggleCompetitionSource,
    KaggleDatasetSource,
    SyntheticSource,
    UrlSource,
)
from guie.params.kaggle import KaggleParams
from guie.progress import console, progress_bar

if TYPE_CHECKING:
    from guie.params.load import Params

STAGING_PREFIX = ".guie-staging."


@dataclass(frozen=True)
class _Context:
    project_root: Path  # a folder source's relative `path` starts here
    raw_root: Path
    cache_root: Path
    kaggle: KaggleParams
    limits: DownloadParams

    def downloads(self, source_name: str) -> Path:
        """data/downloads/<name>/: fetched files, kept between runs (and out of git)."""
        cache = self.cache_root
        if not (cache / ".gitignore").exists():
            write_text(
                cache / ".gitignore", "# guie's download cache: fetched archives, kept so re-runs only unpack\n*\n"
            )
        return cache / source_name


def _materialise_synthetic(source: SyntheticSource, out_dir: Path, ctx: _Context) -> int:
    from guie.data.synthetic import generate_synthetic

    total = len(source.domains) * source.instances_per_domain * source.views_per_instance
    with progress_bar(f"synthetic {source.name}", total) as advance:
        return generate_synthetic(source, out_dir, progress=advance)


def _materialise_folder(source: FolderSource, out_dir: Path, ctx: _Context) -> int:
    folder = source_dir(source, ctx.raw_root, ctx.project_root)
    if not folder.is_dir():
        get = f"; get it from {source.homepage}" if source.homepage else ""
        raise GuieError(
            f"data.sources[{source.name}].path: {folder} is not a directory{get}, or point `path` at your copy"
        )
    digest, files, size = hashlib.sha256(), 0, 0
    with progress_bar(f"listing {source.name}", None) as advance:
        for here, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(here, name)
                st = os.stat(path) if os.path.exists(path) else os.lstat(path)  # a broken link counts as itself
                rel = os.path.relpath(path, folder)
                digest.update(os.fsencode(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n"))
                files, size = files + 1, size + st.st_size
                advance(1)
    out_dir.mkdir(parents=True)
    record = {"path": str(folder), "files": files, "bytes": size, "listing_sha256": digest.hexdigest()}
    write_text(out_dir / "folder.json", json.dumps(record, indent=2) + "\n")
    return files


def _unpack(path: Path, out_dir: Path, ctx: _Context) -> int:
    """An archive is extracted (safely, within data.download's caps); any other file is copied as it is."""
    if is_archive(path):
        return extract_archive(path, out_dir, ctx.limits)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out_dir / path.name)
    return 1


def _materialise_url(source: UrlSource, out_dir: Path, ctx: _Context) -> int:
    from guie.data.fetch import fetch_url, verify_file

    parsed = urlparse(source.url)
    if parsed.scheme.lower() == "file":
        path = Path(url2pathname(unquote(parsed.path)))
        if not path.is_file():
            raise GuieError(f"data.sources[{source.name}].url: {path} is not a file")
        verify_file(path, source.sha256, source.url)  # read in place: no copy in the download cache
    else:
        path = fetch_url(source.url, ctx.downloads(source.name), source.sha256)
    return _unpack(path, out_dir, ctx)


def _materialise_kaggle_dataset(source: KaggleDatasetSource, out_dir: Path, ctx: _Context) -> int:
    from guie.kaggle.download import download_kaggle_dataset

    path = download_kaggle_dataset(source.dataset, ctx.downloads(source.name), source.file or None, params=ctx.kaggle)
    return _unpack(path, out_dir, ctx)


def _materialise_kaggle_competition(source: KaggleCompetitionSource, out_dir: Path, ctx: _Context) -> int:
    from guie.kaggle.download import download_kaggle_competition

    paths = download_kaggle_competition(
        source.competition, ctx.downloads(source.name), list(source.files) or None, params=ctx.kaggle
    )
    return sum(_unpack(path, out_dir, ctx) for path in paths)


_MATERIALISERS = {
    SyntheticSource: _materialise_synthetic,
    FolderSource: _materialise_folder,
    UrlSource: _materialise_url,
    KaggleDatasetSource: _materialise_kaggle_dataset,
    KaggleCompetitionSource: _materialise_kaggle_competition,
}


def _announce(source: object) -> None:
    """Print where a real source comes from and the terms it is used under."""
    terms, homepage = getattr(source, "terms", ""), getattr(source, "homepage", "")
    if terms or homepage:
        text = Text.assemble((f"{source.name}", "bold"), f" ({homepage})" if homepage else "")
        if terms:
            text.append(f"\n  licence and terms: {terms}")
        console.print(text)


def _is_staging(entry: Path, names: set[str]) -> bool:
    """guie's own staging folders: .guie-staging.*, and .<source>.<8 random chars> from older versions."""
    if entry.name.startswith(STAGING_PREFIX):
        return True
    legacy = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}", entry.name)
    return bool(legacy and legacy.group(1) in names)


def clean_stale_staging(raw_root: Path, names: set[str]) -> list[Path]:
    """Delete the staging folders a killed run left in raw_root; returns them."""
    stale = [e for e in sorted(raw_root.iterdir()) if _is_staging(e, names) and e.is_dir() and not e.is_symlink()]
    for entry in stale:
        console.print(f"removing {entry}: left by an interrupted `guie download`", soft_wrap=True)
        shutil.rmtree(entry)
    return stale


def _replace(staging: Path, target: Path) -> None:
    """Put the finished staging folder at `target`; the previous copy is deleted only once it is."""
    old = staging.with_name(staging.name + ".old")  # a staging name: a killed run's is cleaned next time
    had_old = target.exists() or target.is_symlink()
    if had_old:
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if had_old:
            old.rename(target)  # put the previous copy back
        raise
    if old.is_symlink() or old.is_file():
        old.unlink()
    elif old.exists():
        shutil.rmtree(old)


@contextmanager
def _one_download_at_a_time(raw_root: Path) -> Iterator[None]:
    """An exclusive lock on raw_root itself, so a second run cannot delete the first one's staging."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(raw_root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GuieError(
                f"download: another `guie download` is writing into {raw_root}; "
                "wait for it to finish (or stop it), then re-run"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def download_sources(params: Params, project_root: Path, raw_root: Path, cache_root: Path) -> dict[str, int]:
    """Materialise all sources under raw_root (data/raw), fetching into cache_root (data/downloads);
    returns files per source. A folder source's relative `path` is taken from project_root."""
    writable_dir(raw_root, "download")
    with _one_download_at_a_time(raw_root):
        try:
            clean_stale_staging(raw_root, {s.name for s in params.data.sources})
        except OSError as err:
            raise os_error(err, "download", raw_root) from None
        ctx = _Context(project_root, raw_root, cache_root, params.kaggle, params.data.download)
        counts: dict[str, int] = {}
        for source in params.data.sources:
            _announce(source)
            target = raw_root / source.name
            try:
                staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{source.name}.", dir=raw_root))
                try:
                    staging.rmdir()  # materialisers expect a path that does not exist yet
                    count = _MATERIALISERS[type(source)](source, staging, ctx)
                    if count == 0:
                        raise GuieError(f"data.sources[{source.name}]: the source produced no files")
                    _replace(staging, target)
                finally:
                    if staging.exists():
                        shutil.rmtree(staging)
            except OSError as err:
                raise os_error(err, "download", target) from None
            counts[source.name] = count
    return counts
