"""torch.save straight into the file, atomically: for the big files training writes (feature
caches, resume checkpoints, shared soups), which `atomic.torch_save` would first build in memory
(twice: the buffer and its bytes). The bytes are torch_save's (a file object, like its buffer, names
the archive "archive"), and a disk that refuses the write is the same one-line GuieError."""

from __future__ import annotations

import os

import torch

from guie.atomic import atomic_path


class _Recorder:
    """A file's writes, keeping the OSError a disk raised: torch reports it as a RuntimeError
    without the cause."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def save_streamed(obj: object, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        recorder = _Recorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None  # atomic_path names the folder and the cause
            raise
