"""The one exception type the CLI turns into a clean, actionable message instead of a traceback,
and the one wording of an OS error a user can fix (a full disk, a read-only folder)."""

from __future__ import annotations

import errno


class GuieError(Exception):
    """A user-facing error: the message names the file or field and says what to do."""


def require_inputs(stage: str, *pairs: tuple[object, str]) -> None:
    """Fail fast when a stage's inputs are missing, naming the stage that produces each one.

    `pairs` are (path, producing stage) tuples.
    """
    from pathlib import Path

    for path, producer in pairs:
        if not Path(path).exists():
            raise GuieError(
                f"{stage}: input {path} not found; "
                f"run `dvc repro {producer}` (or `guie {producer.replace('_', ' ').replace('@', ' ')}`) first"
            )


def os_hint(err: OSError) -> str:
    """What to change, for the OS errors a user can fix."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return "fix its permissions (chmod u+rwx on the folder, or its owner)"
    if err.errno == errno.EROFS:
        return "it is on a read-only file system: remount it read-write or move the project to a writable disk"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some disk space"
    if err.errno == errno.EFBIG:
        return "the file is larger than this process may write: raise the limit (`ulimit -f`) or free the quota"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is where a folder is needed: move or delete it"
    return "fix the cause"


def os_error(err: OSError, stage: str, where: object) -> GuieError:
    """One line for an OSError hit by a stage: the path, the cause, what to change."""
    path = err.filename if err.filename is not None else where
    return GuieError(f"{stage}: {path}: {err.strerror or err}; {os_hint(err)}, then re-run `guie {stage}`")
