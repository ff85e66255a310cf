"""Archives are unpacked into data/raw/<name>/ only: hostile members are refused by name, and a
refused archive leaves nothing anywhere."""

from __future__ import annotations

import stat
import tarfile
from pathlib import Path

import crafted
import pytest

from guie.data.archive import extract_archive
from guie.errors import GuieError
from guie.layout import Layout
from guie.stages.download import download_sources

GOOD = crafted.jpeg(seed=11)
_tar, _info, _zip = crafted.write_tar, crafted.tar_member, crafted.write_zip

FIRST = (_info("ok/first.jpg"), GOOD)  # a good member first: the refusal must undo it too

HOSTILE_TARS = {
    "absolute path": [FIRST, (_info("/tmp/guie-evil.txt"), b"x")],
    "dot-dot component": [FIRST, (_info("ok/../../evil.txt"), b"x")],
    "symlink outside": [FIRST, (_info("ok/link", tarfile.SYMTYPE, "../../evil-target"), None)],
    "absolute symlink": [FIRST, (_info("ok/passwd", tarfile.SYMTYPE, "/etc/passwd"), None)],
    "hardlink outside": [FIRST, (_info("ok/hard", tarfile.LNKTYPE, "../evil.txt"), None)],
    "character device": [FIRST, (_info("ok/tty", tarfile.CHRTYPE), None)],
    "fifo": [FIRST, (_info("ok/pipe", tarfile.FIFOTYPE), None)],
}
TAR_MESSAGES = {
    "absolute path": "has an absolute path",
    "dot-dot component": "has a '..' component",
    "symlink outside": "symlink pointing outside",
    "absolute symlink": "symlink pointing outside",
    "hardlink outside": "hardlink pointing outside",
    "character device": "device or special file",
    "fifo": "device or special file",
}
HOSTILE_ZIPS = {
    "dot-dot component": (
        [("ok/a.jpg", GOOD, stat.S_IFREG | 0o644), ("../evil.txt", b"x", stat.S_IFREG | 0o644)],
        "'..' component",
    ),
    "absolute path": ([("/evil.txt", b"x", stat.S_IFREG | 0o644)], "absolute path"),
    "symlink outside": ([("ok/link", b"../../etc/passwd", stat.S_IFLNK | 0o777)], "symlink pointing outside"),
    "device": ([("ok/dev", b"", stat.S_IFCHR | 0o644)], "device or special file"),
}


def _params(params_with, archive: Path):
    return params_with(
        [
            {"name": "shop", "type": "url", "url": archive.as_uri(), "domain": "packaged"},
            {"name": "pca", "type": "folder", "path": "never-reached", "domain": "meme", "role": "pca"},
        ]
    )


def _assert_nothing_left(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == []  # no source dir, no staging dir
    assert not list(tmp_path.rglob("*evil*")) and not Path("/tmp/guie-evil.txt").exists()


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_members_are_refused_and_nothing_is_written(case, tmp_path, params_with):
    (tmp_path / "in").mkdir()
    archive = _tar(tmp_path / "in" / "shop.tar.gz", HOSTILE_TARS[case], "w:gz")
    with pytest.raises(GuieError, match=TAR_MESSAGES[case]) as err:
        download_sources(_params(params_with, archive), tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert "refusing to unpack" in str(err.value)
    _assert_nothing_left(tmp_path)


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_members_are_refused_and_nothing_is_written(case, tmp_path, params_with):
    members, message = HOSTILE_ZIPS[case]
    (tmp_path / "in").mkdir()
    archive = _zip(tmp_path / "in" / "shop.zip", members)
    with pytest.raises(GuieError, match=message):
        download_sources(_params(params_with, archive), tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    _assert_nothing_left(tmp_path)


def test_links_inside_the_archive_are_kept(tmp_path):
    archive = _tar(
        tmp_path / "good.tar",
        [
            (_info("a/1.jpg"), GOOD),
            (_info("a/same.jpg", tarfile.LNKTYPE, "a/1.jpg"), None),
            (_info("b/alias.jpg", tarfile.SYMTYPE, "../a/1.jpg"), None),
        ],
    )
    assert extract_archive(archive, tmp_path / "out") == 1  # one regular file; the links are links
    assert (tmp_path / "out/a/same.jpg").read_bytes() == GOOD
    assert (tmp_path / "out/b/alias.jpg").is_symlink() and (tmp_path / "out/b/alias.jpg").read_bytes() == GOOD


@pytest.mark.parametrize("name", ["cut.zip", "cut.tar.gz"])
def test_a_truncated_archive_says_to_download_again(name, tmp_path):
    full = tmp_path / f"full-{name}"
    if name.endswith(".zip"):
        _zip(full, [(f"a/{i}.jpg", crafted.jpeg(seed=i), stat.S_IFREG | 0o644) for i in range(4)])
    else:
        _tar(full, [(_info(f"a/{i}.jpg"), crafted.jpeg(seed=i)) for i in range(4)], "w:gz")
    cut = tmp_path / name
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(GuieError, match=r"not a readable (zip|tar) archive .*delete it and re-run `guie download`"):
        extract_archive(cut, tmp_path / "out")
