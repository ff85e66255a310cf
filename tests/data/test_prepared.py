"""The prepared-image store: the bytes `prepare` makes, decoded once, shared by every reader, and a build
that was killed resumes."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from guie.contract import host_decode
from guie.data.dataset import ManifestDataset
from guie.data.manifest import ManifestRow, write_table
from guie.data.prepared import DIGEST_BYTES, PreparedStore, store_dir
from guie.data.transforms import EvalPreprocess, Normalize, ResizeToUint8
from guie.errors import GuieError


def _pre(size=48, resize="squash"):
    return EvalPreprocess(size, resize, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _images(root, n, first=0, size=(90, 60)):
    rows = []
    for i in range(first, first + n):
        generator = torch.Generator().manual_seed(i)
        pixels = torch.randint(0, 256, (size[1] + i % 7, size[0] + i % 5, 3), dtype=torch.uint8, generator=generator)
        path = root / f"img{i}.jpg"
        Image.fromarray(pixels.numpy()).save(path, quality=90)
        digest = f"{i + 1:064x}"  # any distinct sha256-shaped key: the store never hashes files itself
        rows.append(ManifestRow(path.name, digest, "s", "d", f"c{i}", "train", *Image.open(path).size))
    return rows


@pytest.mark.parametrize("resize", ["squash", "shortest_side_crop"])
def test_views_are_the_bytes_prepare_makes(tmp_path, resize):
    rows, pre = _images(tmp_path, 5), _pre(resize=resize)
    store = PreparedStore(tmp_path / "prepared", pre)
    store.ensure(rows, tmp_path, workers=2)
    prepare = ResizeToUint8(pre)
    for row in rows:
        expected = prepare(host_decode(tmp_path / row.path))
        view = store.view(row.sha256)
        assert view.dtype == torch.uint8 and torch.equal(view, expected)
    # the training dataset reads the same views through the store as without it
    with_store = ManifestDataset(rows, tmp_path, Normalize(pre), prepare=prepare, store=store)
    without = ManifestDataset(rows, tmp_path, Normalize(pre), prepare=prepare)
    assert all(torch.equal(with_store[i][0], without[i][0]) for i in range(len(rows)))


def test_only_missing_images_are_prepared_and_geometries_keep_their_own_store(tmp_path, capsys):
    rows = _images(tmp_path, 6)
    store = PreparedStore(tmp_path / "prepared", _pre())
    store.ensure(rows[:4], tmp_path, workers=1)
    first = store.pixels_path.read_bytes()
    store.ensure(rows, tmp_path, workers=1)  # two more
    assert store.pixels_path.read_bytes()[: len(first)] == first
    assert store.index_path.stat().st_size == 6 * DIGEST_BYTES
    assert "6 images" in capsys.readouterr().err
    store.ensure(rows, tmp_path, workers=1)  # nothing to do
    assert store.index_path.stat().st_size == 6 * DIGEST_BYTES
    other = PreparedStore(tmp_path / "prepared", _pre(size=32))
    assert other.dir != store.dir and store_dir(tmp_path, _pre(resize="shortest_side_crop")) != store.dir


def test_a_torn_tail_is_rebuilt(tmp_path):
    rows = _images(tmp_path, 4)
    store = PreparedStore(tmp_path / "prepared", _pre())
    store.ensure(rows[:2], tmp_path, workers=1)
    with open(store.index_path, "ab") as index:  # a kill in the middle of appending a digest
        index.write(b"\x07" * 10)
    with open(store.pixels_path, "ab") as pixels:  # ... after writing pixels nobody indexed
        pixels.write(b"\xff" * store.slot_bytes)
    fresh = PreparedStore(tmp_path / "prepared", _pre())
    fresh.ensure(rows, tmp_path, workers=1)
    assert fresh.index_path.stat().st_size == 4 * DIGEST_BYTES
    prepare = ResizeToUint8(_pre())
    assert all(torch.equal(fresh.view(r.sha256), prepare(host_decode(tmp_path / r.path))) for r in rows)


_BUILD = """
import sys
from pathlib import Path
import guie.data.prepared as prepared
from guie.data.manifest import read_manifest
from guie.data.transforms import EvalPreprocess
prepared._CHUNK = 2
root = Path(sys.argv[1])
store = prepared.PreparedStore(root / "prepared", EvalPreprocess(48, "squash", (0.5,) * 3, (0.25,) * 3))
store.ensure(read_manifest(root / "manifest.csv"), root, workers=1)
"""


def test_a_killed_build_resumes(tmp_path):
    rows = _images(tmp_path, 80, size=(400, 300))
    write_table(rows, tmp_path / "manifest.csv")
    index = store_dir(tmp_path / "prepared", _pre()) / "index.bin"
    child = subprocess.Popen([sys.executable, "-c", _BUILD, str(tmp_path)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (index.exists() and index.stat().st_size >= 4 * DIGEST_BYTES) and time.monotonic() < deadline:
            assert child.poll() is None, "the build ended before it could be killed"
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    indexed = index.stat().st_size // DIGEST_BYTES
    assert 2 <= indexed < len(rows), indexed  # killed part-way
    store = PreparedStore(tmp_path / "prepared", _pre())
    store.ensure(rows, tmp_path, workers=1)
    assert store.index_path.stat().st_size == len(rows) * DIGEST_BYTES
    prepare = ResizeToUint8(_pre())
    assert all(torch.equal(store.view(r.sha256), prepare(host_decode(tmp_path / r.path))) for r in rows)


def test_bad_state_and_unknown_images_name_the_store(tmp_path):
    rows = _images(tmp_path, 2)
    store = PreparedStore(tmp_path / "prepared", _pre())
    store.ensure(rows[:1], tmp_path, workers=1)
    with pytest.raises(GuieError, match=f"{store.dir}: no prepared view of image 000000000000"):
        store.view(rows[1].sha256)
    store.pixels_path.write_bytes(b"")  # the pixels went missing, the index did not
    with pytest.raises(GuieError, match="index.bin lists 1 images but pixels.u8 holds 0.*delete"):
        PreparedStore(tmp_path / "prepared", _pre()).ensure(rows, tmp_path, workers=1)
