"""Unpack zip and tar archives without trusting them.

Every member is checked before it is written: absolute paths, `..` components, links that
point outside the target, and device or other special files are refused with an error naming
the member. Nothing is ever written through a link: a member whose path passes through a
symlink already on disk (one an earlier member created) is refused, a file is opened with
O_NOFOLLOW, and each member's real path must stay inside the target. Tar members also go
through tarfile's `data` filter as a second guard.

Decompression bombs: members are streamed in chunks and the bytes actually written are counted
against `data.download` (max_member_gib, max_unpacked_gib, max_compression_ratio), and the disk
must keep min_free_gib free after each member; headers are checked first, so an archive that
declares too much is refused before anything is written.

The caller extracts into a fresh staging directory and deletes it on any error, so a refused
archive leaves nothing behind.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from guie.errors import GuieError
from guie.params.data import DownloadParams
from guie.progress import progress_bar

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)
GIB = 1 << 30
CHUNK = 1 << 20
RATIO_FLOOR = 1 << 20  # compression ratios are judged past 1 MiB: a tiny member may compress absurdly well, harmlessly
MAX_LINK_TARGET = 4096  # bytes of a zip symlink's target (PATH_MAX)


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


def _gib(n: float) -> str:
    return f"{n / GIB:.3g} GiB"


@dataclass
class _Budget:
    """What one archive may still write, and the checks made as its bytes are written."""

    archive: Path
    dest: Path
    limits: DownloadParams
    compressed: int  # the archive's size on disk: the tar ratio's denominator
    total: int = 0  # bytes written so far, all members

    def _over(self, member: str, what: str, key: str) -> GuieError:
        return GuieError(
            f"{self.archive}: member {member!r} {what} (data.download.{key}); refusing to unpack this archive "
            f"(nothing was kept). It may be a decompression bomb: if you trust it, raise data.download.{key} "
            "in params.yaml."
        )

    def check_disk(self, needed: int, member: str | None = None) -> None:
        """Refuse before writing `needed` more bytes if that would leave less than min_free_gib free."""
        free = shutil.disk_usage(self.dest).free
        keep = self.limits.min_free_gib * GIB
        if free - needed < keep:
            what = f"member {member!r}" if member is not None else "it"
            raise GuieError(
                f"{self.archive}: not enough free disk to unpack {what} into {self.dest}: it needs {_gib(needed)}, "
                f"{_gib(free)} is free and data.download.min_free_gib keeps {self.limits.min_free_gib:g} GiB free; "
                "free some space (or move the project to a bigger disk) and re-run `guie download`"
            )

    def check_declared(self, member: str, size: int, compressed: int | None) -> None:
        """Header checks, before a member is written (headers can lie: `write` counts again)."""
        self.check_size(member, size, self.total + size)
        if compressed is not None:
            self.check_ratio(member, size, compressed, per_member=True)
        self.check_ratio(member, self.total + size, self.compressed, per_member=False)
        self.check_disk(size, member)

    def check_size(self, member: str, written: int, total: int) -> None:
        if written > self.limits.max_member_gib * GIB:
            raise self._over(
                member,
                f"unpacks to more than the limit of {_gib(self.limits.max_member_gib * GIB)} per member",
                "max_member_gib",
            )
        if total > self.limits.max_unpacked_gib * GIB:
            raise self._over(
                member,
                f"takes the archive past the limit of {_gib(self.limits.max_unpacked_gib * GIB)} unpacked",
                "max_unpacked_gib",
            )

    def check_ratio(self, member: str, unpacked: int, compressed: int, per_member: bool) -> None:
        if unpacked <= RATIO_FLOOR:
            return
        ratio = unpacked / max(compressed, 1)
        if ratio > self.limits.max_compression_ratio:
            whose = "its compressed size" if per_member else f"the archive's {compressed} bytes"
            limit = self.limits.max_compression_ratio
            raise self._over(
                member, f"unpacks to {ratio:.0f} times {whose}, over the limit of {limit:g}", "max_compression_ratio"
            )

    def write(self, src: IO[bytes], path: Path, member: str, compressed: int | None) -> None:
        """Stream `src` into the new file `path`, counting bytes against every cap as they come."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)  # O_NOFOLLOW: never write through a link
        written = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                self.check_size(member, written, self.total)
                if compressed is not None:  # a zip member's own ratio
                    self.check_ratio(member, written, compressed, per_member=True)
                self.check_ratio(member, self.total, self.compressed, per_member=False)  # the whole file's
                out.write(chunk)


class _Tree:
    """The directories of the extraction root known to be real (never links), so that nothing is
    written through a link: a parent that is a symlink on disk is refused, whoever created it."""

    def __init__(self, archive: Path, dest: Path):
        self.archive, self.dest = archive, dest
        self.real_dest = os.path.realpath(dest)
        self.dirs: set[str] = {""}
        self.links = 0  # symlinks created: if any, the finished tree is checked again

    def parent(self, member: str, name: str) -> Path:
        """Create (as real directories) the parents of `name`; refuse any that is a link or a file."""
        folder = posixpath.dirname(name)
        self.mkdirs(member, folder)
        return self.dest / name

    def mkdirs(self, member: str, folder: str) -> None:
        if folder in self.dirs:
            return
        parts = folder.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self.dirs:
                continue
            path = self.dest / sub
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise _refuse(
                        self.archive,
                        member,
                        f"is written through the symlink {sub!r} (links are never followed while unpacking)",
                    )
                if not stat.S_ISDIR(st.st_mode):
                    raise _refuse(
                        self.archive, member, f"needs the folder {sub!r}, which an earlier member made a file"
                    )
            self.dirs.add(sub)

    def target(self, member: str, name: str) -> Path:
        """The member's own path, checked: parents real, itself not a link, its real path inside."""
        path = self.parent(member, name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = 0
        if stat.S_ISLNK(mode):
            raise _refuse(self.archive, member, "would overwrite the symlink an earlier member created")
        if stat.S_ISDIR(mode):
            raise _refuse(self.archive, member, "clashes with a folder of the same name")
        self.inside(member, path)
        return path

    def inside(self, member: str, path: Path | str) -> None:
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.real_dest]) != self.real_dest:
            raise _refuse(self.archive, member, f"resolves outside the archive ({real})")


def _clean_name(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")).lstrip("/") if name else ""


def _tar_problem(member: tarfile.TarInfo) -> str | None:
    why = _unsafe_name(member.name)
    if why:
        return why
    if member.issym() and _link_escapes(member.name, member.linkname, relative_to_member=True):
        return f"is a symlink pointing outside the archive ({member.linkname!r})"
    if member.islnk() and (_unsafe_name(member.linkname) or _link_escapes(member.name, member.linkname, False)):
        return f"is a hardlink pointing outside the archive ({member.linkname!r})"
    if (
        member.ischr()
        or member.isblk()
        or member.isfifo()
        or not (member.isfile() or member.isdir() or member.issym() or member.islnk())
    ):
        return "is a device or special file"
    return None


def _extract_tar(archive: Path, tree: _Tree, limits: DownloadParams) -> int:
    files, dest = 0, tree.dest
    budget = _Budget(archive, dest, limits, compressed=archive.stat().st_size)
    budget.check_disk(budget.compressed)  # a plain tar unpacks to about its size; a compressed one to more
    try:
        with tarfile.open(archive, "r:*") as tar, progress_bar(f"unpacking {archive.name}", None) as advance:
            for member in tar:  # streaming: a .tar.gz is decompressed once
                why = _tar_problem(member)
                if why:
                    raise _refuse(archive, member.name, why)
                try:
                    member = tarfile.data_filter(member, str(dest))  # the stdlib's checks, e.g. links through links
                except tarfile.FilterError as err:
                    raise _refuse(archive, member.name, f"was refused by tarfile's data filter ({err})") from None
                name = _clean_name(member.name)
                if member.isdir():
                    if name != ".":
                        tree.mkdirs(member.name, name)
                elif member.isfile():
                    # tar headers are exact: tarfile writes member.size bytes
                    budget.check_declared(member.name, member.size, None)
                    path = tree.target(member.name, name)
                    src = tar.extractfile(member)
                    budget.write(src, path, member.name, None)
                    files += 1
                else:  # a link, already judged by name and by the data filter
                    tree.target(member.name, name)
                    tar.extract(member, dest, set_attrs=False, filter="data")
                    tree.inside(member.name, dest / name)
                    tree.links += member.issym()
                advance(1)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as err:  # corrupt or cut short
        raise GuieError(
            f"{archive}: not a readable tar archive ({err}); delete it and re-run `guie download`"
        ) from None
    return files


def _zip_kind(info: zipfile.ZipInfo) -> int:
    mode = info.external_attr >> 16
    return stat.S_IFMT(mode) if info.create_system == 3 and mode else 0  # 3: unix; others carry no file type


def _zip_problem(info: zipfile.ZipInfo, kind: int) -> str | None:
    why = _unsafe_name(info.filename)
    if why:
        return why
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        return "is a device or special file"
    if info.flag_bits & 0x1:
        return "is encrypted (guie cannot unpack password-protected archives)"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        return (
            f"uses compression method {info.compress_type}, which Python cannot read; "
            "unpack it with another tool and use a `folder` source"
        )
    return None


def _check_zip_headers(archive: Path, infos: list[zipfile.ZipInfo], budget: _Budget) -> int:
    """Refuse what the headers already give away, before writing anything; the bytes they declare in all."""
    declared = 0
    for info in infos:
        kind = _zip_kind(info)
        why = _zip_problem(info, kind)
        if why:
            raise _refuse(archive, info.filename, why)
        if kind != stat.S_IFLNK and not info.is_dir():
            declared += info.file_size
            budget.check_size(info.filename, info.file_size, declared)
            budget.check_ratio(info.filename, info.file_size, info.compress_size, per_member=True)
            # members sharing data
            budget.check_ratio(info.filename, declared, budget.compressed, per_member=False)
    return declared


def _unpack_zip_symlink(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, tree: _Tree) -> None:
    with zf.open(info) as src:
        raw = src.read(MAX_LINK_TARGET + 1)
    target = raw.decode("utf-8", "replace")
    if len(raw) > MAX_LINK_TARGET or not target or "\0" in target:
        raise _refuse(archive, info.filename, "is a symlink with an invalid target")
    if _link_escapes(name, target, relative_to_member=True):
        raise _refuse(archive, info.filename, f"is a symlink pointing outside the archive ({target!r})")
    link = tree.target(info.filename, name)
    tree.inside(info.filename, os.path.join(os.path.dirname(link), target))  # following links on disk
    try:
        os.symlink(target, link)
    except FileExistsError:
        raise _refuse(archive, info.filename, "is a symlink over a file of the same name") from None
    tree.links += 1


def _unpack_zip_file(
    archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, tree: _Tree, budget: _Budget
) -> None:
    if name == ".":
        raise _refuse(archive, info.filename, "is a file without a name")
    budget.check_disk(info.file_size, info.filename)
    path = tree.target(info.filename, name)
    with zf.open(info) as src:
        budget.write(src, path, info.filename, info.compress_size)


def _unpack_zip_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: _Tree, budget: _Budget) -> int:
    """Unpack one member (a folder, a symlink or a file); the number of files it wrote (0 or 1)."""
    kind, name = _zip_kind(info), _clean_name(info.filename)
    if info.is_dir() or kind == stat.S_IFDIR:
        if name != ".":
            tree.mkdirs(info.filename, name)
        return 0
    if kind == stat.S_IFLNK:
        _unpack_zip_symlink(archive, zf, info, name, tree)
        return 0
    _unpack_zip_file(archive, zf, info, name, tree, budget)
    return 1


def _extract_zip(archive: Path, tree: _Tree, limits: DownloadParams) -> int:
    files = 0
    budget = _Budget(archive, tree.dest, limits, compressed=archive.stat().st_size)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            budget.check_disk(_check_zip_headers(archive, infos, budget))
            with progress_bar(f"unpacking {archive.name}", len(infos)) as advance:
                for info in infos:
                    files += _unpack_zip_member(archive, zf, info, tree, budget)
                    advance(1)
    except zipfile.BadZipFile as err:
        raise GuieError(
            f"{archive}: not a readable zip archive ({err}); delete it and re-run `guie download`"
        ) from None
    except (zlib.error, lzma.LZMAError, EOFError, NotImplementedError) as err:
        raise GuieError(
            f"{archive}: not a readable zip archive ({type(err).__name__}: {err}); delete it and re-run `guie download`"
        ) from None
    return files


def _check_links(archive: Path, dest: Path) -> None:
    """Every link left in the tree resolves inside it: a later link can redirect an earlier one."""
    real_dest = os.path.realpath(dest)
    for here, dirs, names in os.walk(dest):
        for name in dirs + names:
            path = os.path.join(here, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if os.path.commonpath([real, real_dest]) != real_dest:
                    member = os.path.relpath(path, dest)
                    raise _refuse(
                        archive, member, f"is a symlink that resolves outside the archive ({real}) through other links"
                    )


def extract_archive(archive: Path, dest: Path, limits: DownloadParams | None = None) -> int:
    """Unpack `archive` into the directory `dest` (created); returns the number of files written.

    `limits`: the decompression-bomb caps (data.download); the defaults when None.
    """
    limits = limits or DownloadParams()
    dest.mkdir(parents=True, exist_ok=True)
    tree = _Tree(archive, dest)
    try:
        if archive.name.lower().endswith(".zip"):
            files = _extract_zip(archive, tree, limits)
        else:
            files = _extract_tar(archive, tree, limits)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GuieError(
                f"{archive}: the disk filled up while unpacking into {dest} ({err.strerror}); "
                "free some space and re-run `guie download`"
            ) from None
        raise
    if tree.links:
        _check_links(archive, dest)
    return files
