"""Manifest rows as columns: what a dataset indexed by loader workers keeps of its rows.

A list of row objects costs a few Python objects per row, and every loader worker (a forked copy of
its process) that touches them writes their reference counts, copying each page they live on into
its own memory: 1M rows x 8 workers x 8 processes of a node. Columns are a handful of arrays
whatever the row count, so a worker reads its parent's pages and copies none."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from guie.data.manifest import ManifestRow

_UNKNOWN = -2  # a row whose class is not in `labels`: its label() raises, as the mapping would


class RowColumns:
    """Path, sha256 and label index of each row: paths as one UTF-8 blob and offsets, digests as
    fixed-width bytes, label indices (-1 without `labels`) as integers."""

    def __init__(self, rows: Sequence[ManifestRow], labels: dict[str, int] | None = None):
        paths = [r.path.encode("utf-8") for r in rows]
        self._offsets = np.zeros(len(paths) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in paths], out=self._offsets[1:])
        self._paths = np.frombuffer(b"".join(paths), dtype=np.uint8)
        self._sha256 = np.array([r.sha256 for r in rows], dtype="S64")
        if labels is None:
            self._labels = np.full(len(rows), -1, dtype=np.int64)
        else:
            self._labels = np.array([labels.get(r.label, _UNKNOWN) for r in rows], dtype=np.int64)
        # the (normally no) rows whose class `labels` lacks, to name it when asked
        self._unknown = {i: r.label for i, r in enumerate(rows) if self._labels[i] == _UNKNOWN}

    def __len__(self) -> int:
        return len(self._sha256)

    def path(self, i: int) -> str:
        return self._paths[self._offsets[i] : self._offsets[i + 1]].tobytes().decode("utf-8")

    def sha256(self, i: int) -> str:
        return self._sha256[i].decode("ascii")

    def label(self, i: int) -> int:
        if self._labels[i] == _UNKNOWN:
            raise KeyError(self._unknown[i])
        return int(self._labels[i])
