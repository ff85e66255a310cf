"""Unpack zip and tar archives without trusting them.

Every member is checked before it is written: absolute paths, `..` components, links that
point outside the target, and device or other special files are refused with an error naming
the member. Tar members are then extracted with tarfile's `data` filter as a second guard.
The caller extracts into a fresh staging directory and deletes it on any error, so a refused
archive leaves nothing behind.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from guie.errors import GuieError
from guie.progress import progress_bar

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)


def is_archive(path: Path) -> bool:
    """By name, the way Kaggle and dataset hosts name their downloads."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_name(name: str) -> str | None:
    """Why a member's own path is refused, or None."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "has a '..' component"
    return None


def _link_escapes(member: str, target: str, relative_to_member: bool) -> bool:
    """Whether a link target leaves the extraction root (judged on the names, before writing)."""
    if target.startswith(("/", "\\")):
        return True
    base = posixpath.dirname(member) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    return resolved == ".." or resolved.startswith("../")


def _refuse(archive: Path, member: str, why: str) -> GuieError:
    return GuieError(
        f"{archive}: member {member!r} {why}; refusing to unpack this archive (nothing was kept). "
        "It is corrupt or unsafe: check where it comes from before using it."
    )


def _tar_problem(member: tarfile.TarInfo) -> str | None:
    why = _unsafe_name(member.name)
    if why:
        return why
    if member.issym() and _link_escapes(member.name, member.linkname, relative_to_member=True):
        return f"is a symlink pointing outside the archive ({member.linkname!r})"
    if member.islnk() and (_unsafe_name(member.linkname) or _link_escapes(member.name, member.linkname, False)):
        return f"is a hardlink pointing outside the archive ({member.linkname!r})"
    if member.ischr() or member.isblk() or member.isfifo() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "is a device or special file"
    return None


def _extract_tar(archive: Path, dest: Path) -> int:
    files = 0
    try:
        with tarfile.open(archive, "r:*") as tar, progress_bar(f"unpacking {archive.name}", None) as advance:
            for member in tar:  # streaming: a .tar.gz is decompressed once
                why = _tar_problem(member)
                if why:
                    raise _refuse(archive, member.name, why)
                try:
                    tar.extract(member, dest, filter="data")
                except tarfile.FilterError as err:  # the stdlib's own checks, e.g. links through links
                    raise _refuse(archive, member.name, f"was refused by tarfile's data filter ({err})") from None
                files += member.isfile()
                advance(1)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as err:  # corrupt or cut short
        raise GuieError(f"{archive}: not a readable tar archive ({err}); delete it and re-run `guie download`") from None
    return files


def _zip_kind(info: zipfile.ZipInfo) -> int:
    mode = info.external_attr >> 16
    return stat.S_IFMT(mode) if info.create_system == 3 and mode else 0  # 3: unix; others carry no file type


def _extract_zip(archive: Path, dest: Path) -> int:
    files = 0
    try:
        with zipfile.ZipFile(archive) as zf, progress_bar(f"unpacking {archive.name}", len(zf.infolist())) as advance:
            for info in zf.infolist():
                why = _unsafe_name(info.filename)
                if why:
                    raise _refuse(archive, info.filename, why)
                kind = _zip_kind(info)
                if kind == stat.S_IFLNK:
                    target = zf.read(info).decode("utf-8", "replace")
                    if _link_escapes(info.filename.rstrip("/"), target, relative_to_member=True):
                        raise _refuse(archive, info.filename, f"is a symlink pointing outside the archive ({target!r})")
                    link = dest / info.filename
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(target, link)
                elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise _refuse(archive, info.filename, "is a device or special file")
                else:
                    zf.extract(info, dest)
                    files += not info.is_dir()
                advance(1)
    except zipfile.BadZipFile as err:
        raise GuieError(f"{archive}: not a readable zip archive ({err}); delete it and re-run `guie download`") from None
    return files


def extract_archive(archive: Path, dest: Path) -> int:
    """Unpack `archive` into the directory `dest` (created); returns the number of files written."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        return _extract_zip(archive, dest)
    return _extract_tar(archive, dest)
