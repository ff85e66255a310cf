"""Real-world image files: each awkward kind is either decoded exactly as the host decodes it or
rejected with a reason, and none of them stops the manifest stage."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import crafted
import pytest
from PIL import Image, ImageOps

from guie.contract import host_decode
from guie.data.image_check import inspect_image
from guie.data.manifest import read_manifest
from guie.layout import Layout
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest

CASES = {  # file name: (bytes, reason category or "" when accepted, (width, height) when accepted)
    "zero.jpg": (b"", "empty file", None),
    "truncated.jpg": (crafted.truncated_jpeg(), "undecodable", None),
    "notes.jpg": (b"these are notes, not a photo\n" * 4, "not an image", None),
    "alpha.png": (crafted.png_with_alpha(), "", (64, 48)),
    "palette.png": (crafted.palette_png(), "", (64, 48)),
    "sixteen_bit.png": (crafted.png_16bit(), "", (64, 48)),
    "cmyk.jpg": (crafted.cmyk_jpeg(), "", (64, 48)),
    "gray.jpg": (crafted.grayscale_jpeg(), "", (64, 48)),
    "exif_rotated.jpg": (crafted.exif_rotated_jpeg(80, 40), "", (80, 40)),  # stored size: the host does not rotate
    "one_pixel.png": (crafted.one_pixel_png(), "too small", None),
    "bomb.png": (crafted.bomb_png(20000), "too large", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_awkward_file_is_decoded_like_the_host_or_rejected(name, tmp_path):
    data, category, size = CASES[name]
    path = tmp_path / name
    path.write_bytes(data)
    digest, width, height, reason = inspect_image(str(path), min_side=32)
    assert reason.split(":")[0] == category, reason
    if size:
        assert (width, height) == size and len(digest) == 64
        assert tuple(host_decode(path).shape) == (3, height, width)  # training decodes the same pixels


def test_exif_orientation_is_not_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(crafted.exif_rotated_jpeg(80, 40))
    with Image.open(path) as img:
        assert ImageOps.exif_transpose(img).size == (40, 80)  # what a viewer would show
    assert inspect_image(str(path), 32)[1:3] == (80, 40)


def _stage(tmp_path: Path, params_with, odd: Path):
    """A train folder of good images plus a PCA folder holding the awkward files."""
    crafted.write_class_folder(tmp_path / "good", {"a": 3, "b": 3, "c": 3})
    params = params_with(
        [
            {"name": "good", "type": "folder", "path": "good", "domain": "toys"},
            {"name": "odd", "type": "folder", "path": str(odd), "domain": "meme", "role": "pca"},
        ]
    )
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    return params


def _rejected(root: Path) -> dict[str, str]:
    text = (root / "data/manifest/rejected.csv").read_bytes().decode("utf-8")  # strict: must be valid UTF-8
    return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(text.splitlines())}


def test_the_stage_survives_every_bad_file_and_says_why(tmp_path, params_with):
    odd = tmp_path / "odd" / "all"
    odd.mkdir(parents=True)
    for name, (data, _, _) in CASES.items():
        (odd / name).write_bytes(data)
    with open(os.path.join(os.fsencode(odd), b"caf\xe9.jpg"), "wb") as f:  # Latin-1 name: not UTF-8
        f.write(crafted.jpeg(seed=7))
    os.mkfifo(odd / "pipe.jpg")  # opening it would block a worker forever
    params = _stage(tmp_path, params_with, odd.parent)

    report = build_manifest(
        params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).manifest, Layout(tmp_path).rejected, workers=2
    )

    rejected = _rejected(tmp_path)
    expected = {name: cat for name, (_, cat, _) in CASES.items() if cat}
    assert {name: rejected[name].split(":")[0] for name in expected} == expected
    assert rejected["pipe.jpg"].startswith("not a regular file")
    assert rejected["caf\\xe9.jpg"].startswith("non-UTF-8 file name")  # shown escaped, the CSV stays UTF-8
    assert "20000x20000" in rejected["bomb.png"]
    rows = {Path(r.path).name: r for r in read_manifest(tmp_path / "data/manifest/manifest.csv")}
    accepted = {name: size for name, (_, cat, size) in CASES.items() if not cat}
    assert {name: (rows[name].width, rows[name].height) for name in accepted} == accepted
    assert all(rows[name].split == "pca" and rows[name].domain == "meme" for name in accepted)
    assert report["by_source"] == {"good": 9, "odd": len(accepted)}
    assert report["rejected_by_reason"]["too large"] == 1 and report["rejected"] == len(expected) + 2


@pytest.mark.skipif(
    os.geteuid() == 0 and not shutil.which("setpriv"),
    reason="as root, setpriv (util-linux) is needed to drop root's override",
)
def test_an_unreadable_file_is_rejected_not_fatal(tmp_path, params_with):
    odd = tmp_path / "odd"
    crafted.write_class_folder(odd, {"x": 2}, seed=1)
    secret = odd / "x" / "secret.jpg"
    secret.write_bytes(crafted.jpeg(seed=9))
    secret.chmod(0)
    _stage(tmp_path, params_with, odd)
    script = (
        "import sys; from pathlib import Path; from support import tiny_params_dict; "
        "from guie.params.load import parse_params;"
        "from guie.stages.manifest import build_manifest; from guie.layout import Layout; raw = tiny_params_dict();"
        f"raw['data']['sources'] = [dict(name='good', type='folder', path='good', domain='toys'),"
        f" dict(name='odd', type='folder', path={str(odd)!r}, domain='meme', role='pca')];"
        f"layout = Layout(Path({str(tmp_path)!r})); "
        "build_manifest(parse_params(raw), layout.root, layout.raw, layout.manifest, layout.rejected, workers=1)"
    )
    # Root reads anything through CAP_DAC_OVERRIDE; run the stage without it, as any user would be.
    drop = "-dac_override,-dac_read_search"
    as_user = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"] if os.geteuid() == 0 else []
    cmd = [*as_user, sys.executable, "-c", script]
    tests_dir = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tests_dir}, timeout=120)
    if done.returncode and "setpriv" in done.stderr:
        pytest.skip(f"cannot drop capabilities here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rejected(tmp_path)["secret.jpg"] == "unreadable: Permission denied"
