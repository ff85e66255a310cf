"""Manifest datasets keep their rows as columns: the same images and labels as the rows say, in a
few objects whatever the row count, so forked loader workers share their parent's pages."""

import gc
import types

import pytest
import torch
from PIL import Image
from support import save_image_row

from guie.data.columns import RowColumns
from guie.data.dataset import ManifestDataset
from guie.data.manifest import ManifestRow


def _rows(n: int) -> list[ManifestRow]:
    return [
        ManifestRow(f"data/raw/s/é{i}/{'x' * (i % 7)}.jpg", f"{i:064x}", "s", "cars", f"s/c{i % 3}", "train", 8, 8)
        for i in range(n)
    ]


def _reachable(root: object) -> int:
    """How many objects `root` reaches (classes, modules and functions aside: shared code, not data)."""
    seen, todo = {id(root)}, [root]
    while todo:
        for ref in gc.get_referents(todo.pop()):
            if isinstance(ref, type | types.ModuleType | types.FunctionType) or id(ref) in seen:
                continue
            seen.add(id(ref))
            todo.append(ref)
    return len(seen)


def test_columns_give_back_each_rows_path_digest_and_label():
    rows = _rows(50)
    labels = {f"s/c{k}": k for k in range(3)}
    columns = RowColumns(rows, labels)
    assert len(columns) == 50
    for i, row in enumerate(rows):
        assert (columns.path(i), columns.sha256(i), columns.label(i)) == (row.path, row.sha256, labels[row.label])
    assert RowColumns(rows).label(7) == -1  # no label mapping
    with pytest.raises(KeyError, match="s/c2"):
        RowColumns(rows, {"s/c0": 0, "s/c1": 1}).label(2)
    assert len(RowColumns([])) == 0


def test_a_dataset_holds_as_many_objects_for_ten_rows_as_for_thousands():
    datasets = [ManifestDataset(_rows(n), ".", lambda x: x, {f"s/c{k}": k for k in range(3)}) for n in (10, 5000)]
    small, large = (_reachable(d) for d in datasets)
    assert small == large


def test_the_dataset_reads_each_rows_image_and_label(tmp_path):
    rows = [save_image_row(tmp_path, f"i{k}.png", Image.new("RGB", (5, 4), (k, 0, 0)), label=f"c{k}") for k in range(3)]
    dataset = ManifestDataset(rows, tmp_path, lambda x: x, {"c0": 0, "c1": 1, "c2": 2})
    for k in range(3):
        image, label = dataset[k]
        assert label == k and int(image[0, 0, 0]) == k and image.shape[-2:] == torch.Size([4, 5])
