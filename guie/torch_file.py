"""Reading back the torch files guie writes (models/*.pt, resume checkpoints, feature caches):
weights only, so no pickled code ever runs, and a damaged or foreign file is refused in one line
naming it and what to do: never a traceback, never torch's advice to load it unsafely."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from guie.errors import GuieError


class DamagedFile(GuieError):
    """A torch file guie cannot use: truncated, corrupt, or not one guie wrote."""

    def __init__(self, path: Path, why: str, remedy: str):
        super().__init__(f"{path}: {why}; {remedy}")
        self.why = why


def _why(path: Path, err: Exception) -> str:
    if not zipfile.is_zipfile(path):
        return "truncated or corrupt (not a complete torch archive; a copy or a write cut short?)"
    if isinstance(err, pickle.UnpicklingError):
        # a weights-only load refuses any pickled object beyond tensors and plain containers
        return "not a guie checkpoint: it holds pickled Python objects, which guie never writes and never loads"
    return f"corrupt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'})"


def read_torch(path: Path, remedy: str, *, keys: tuple[str, ...] = (), mmap: bool = False, device="cpu") -> dict:
    """The dict of tensors torch.save wrote at `path`, with `keys` in it; a DamagedFile ending in
    `remedy` (what to do) otherwise. `mmap`: tensors stay on disk until read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol ...": the error below says it all
            state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except (PermissionError, IsADirectoryError) as err:
        raise GuieError(f"{path}: cannot read it: {err.strerror or err}; {remedy}") from None
    except Exception as err:  # noqa: BLE001 - whatever torch raises on a bad file, the file is the cause
        raise DamagedFile(path, _why(path, err), remedy) from None
    if not isinstance(state, dict):
        raise DamagedFile(path, f"not a guie checkpoint (it holds a {type(state).__name__}, not a dict)", remedy)
    missing = [k for k in keys if k not in state]
    if missing:
        raise DamagedFile(path, f"not a guie checkpoint (no {', '.join(missing)} in it)", remedy)
    return state


def rebuild(stage: str) -> str:
    """What to do about a damaged output of DVC stage `stage` (`guie` command the same, `@` a space)."""
    return f"re-create it with `dvc repro -f -s {stage}` (or delete it and run `guie {stage.replace('@', ' ')}`)"
