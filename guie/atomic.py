"""Atomic writes: an output is either the old file or the complete new one, never half of either.

A write that the disk refuses (full, read-only, a quota, `ulimit -f`) is a GuieError naming the
folder, the file and the cause: never a traceback naming a temporary file."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from guie.errors import GuieError, os_error, os_hint

# the errors a disk gives a writer: full, over quota, past `ulimit -f`, read-only, not permitted
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def write_error(err: OSError, path: Path) -> GuieError:
    """One line for a write into `path`'s folder that the disk refused."""
    return GuieError(f"{path.parent}: cannot write {path.name} there: {err.strerror or err}; {os_hint(err)}")


def _refused_write(err: OSError, tmp: Path) -> bool:
    """Whether `err` is the disk refusing the write of `tmp` (not, say, a read of some other file)."""
    return err.errno in WRITE_ERRNOS and (err.filename is None or Path(err.filename).parent == tmp.parent)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(err, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if _refused_write(err, tmp_path):
            raise write_error(err, path) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """`atomic_path` for files that go together: each is replaced only once all were written."""
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]
        # the renames run as the stack unwinds, after the last file was complete


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def torch_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save through memory: the archive's inner folder is named after the target file,
    so saving to a temp name (or another path) would change the bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def writable_dir(path: Path, stage: str, need_bytes: int = 0) -> None:
    """Create `path` (a stage's output folder) or fail in one line saying what to change, before any
    work: a file in its place, no permission, a read-only file system, or under `need_bytes` free
    (`require_free`)."""
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise GuieError(
                    f"{stage}: {parent} is a file, not a folder; move or delete it and re-run `guie {stage}`"
                )
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".guie-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:  # name the folder, not the probe file
        raise os_error(OSError(err.errno, err.strerror), stage, path) from None
    require_free(path, need_bytes, stage)


def require_free(path: Path, need_bytes: int, stage: str) -> None:
    """Refuse, naming the folder, when its disk has less than `need_bytes` free: a disk that fills
    halfway through a write is refused cleanly too, but only after the work before it."""
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise GuieError(
            f"{stage}: {path}: {_size(free)} free on its disk, and {stage} writes about {_size(need_bytes)} there; "
            f"free some disk space, then re-run `guie {stage}`"
        )


def _size(n: int) -> str:
    return f"{n} B" if n < 2**20 else f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"
