"""Archives built to escape or to fill the disk: link chains that would write outside data/raw,
decompression bombs, and a download killed mid-unpack. Caps are lowered through params, so no
test writes more than a few MiB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import crafted
import pytest
from support import REPO, tiny_params_dict, write_params

from guie.data.archive import extract_archive
from guie.errors import GuieError
from guie.layout import Layout
from guie.stages.download import STAGING_PREFIX, download_sources

GOOD = crafted.jpeg(seed=11)
FILE, LINK = crafted.FILE, crafted.LINK
MIB = 1 << 20
ZEROS = bytes(4 * MIB)  # deflates ~1000x
NOISE = os.urandom(2 * MIB)  # does not compress


def _params(params_with, archive: Path, **download):
    return params_with(
        [
            {"name": "shop", "type": "url", "url": archive.as_uri(), "domain": "packaged"},
            {"name": "pca", "type": "folder", "path": "never-reached", "domain": "meme", "role": "pca"},
        ],
        download=download,
    )


def _url_sources(archive: Path) -> list[dict]:
    """Two sources unpacking the same archive: a train one and the PCA set."""
    return [
        {"name": "shop", "type": "url", "url": archive.as_uri(), "domain": "packaged"},
        {"name": "pca", "type": "url", "url": archive.as_uri(), "domain": "packaged", "role": "pca"},
    ]


def _tree(root: Path) -> set[str]:
    """Every path under root, links not followed (a link out of the tree is listed, not entered)."""
    found = set()
    for here, dirs, files in os.walk(root):
        found |= {os.path.relpath(os.path.join(here, n), root) for n in dirs + files}
    return found


@pytest.fixture
def project(tmp_path):
    """tmp_path/proj: the project; tmp_path/in: the archives; tmp_path itself is watched for strays."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "in").mkdir()
    return tmp_path / "proj"


def _download_refused(params, project: Path, match: str) -> GuieError:
    """Run the download, expect the refusal, and check that nothing was written anywhere."""
    outside = project.parent
    before, siblings = _tree(outside), set(os.listdir(outside.parent))
    with pytest.raises(GuieError, match=match) as err:
        download_sources(params, project, Layout(project).raw, Layout(project).downloads_dir)
    assert os.listdir(project / "data" / "raw") == []  # no source, no staging folder
    assert _tree(outside) - before <= {"proj/data", "proj/data/raw"}  # nothing in the project, nothing beside it
    assert set(os.listdir(outside.parent)) == siblings  # nor above the test's folder
    return err.value


# --- links: extraction never writes through a link, and no member's real path leaves the folder ---

# Each link judged alone by its name stays inside; on disk they chain out of the folder.
CHAIN = [("a", b".", LINK), ("a/b", b"..", LINK), ("a/b/c", b"..", LINK), ("a/b/c/d", b"..", LINK)]
ZIP_ESCAPES = {
    "chain of links, then a file under the last": (
        [("ok/first.jpg", GOOD, FILE), *CHAIN, ("a/b/c/d/evil.txt", b"escaped", FILE)],
        r"member 'a/b' .*written through the symlink 'a'",
    ),
    "a link through an earlier link": (
        [("a", b".", LINK), ("b", b"a/..", LINK), ("b/evil.txt", b"escaped", FILE)],
        r"member 'b' .*resolves outside the archive",
    ),
    "a file written through a link to a folder inside": (
        [("real/first.jpg", GOOD, FILE), ("alias", b"real", LINK), ("alias/evil.txt", b"x", FILE)],
        r"member 'alias/evil.txt' .*written through the symlink 'alias'",
    ),
    "a later link redirects an earlier one": (
        [("b", b"c/..", LINK), ("c", b".", LINK)],
        r"member 'b' .*resolves outside the archive .*through other links",
    ),
    "a file over a link": (
        [("ok/first.jpg", GOOD, FILE), ("ok/link", b"first.jpg", LINK), ("ok/link", b"overwrite", FILE)],
        r"member 'ok/link' would overwrite the symlink",
    ),
}


@pytest.mark.parametrize("case", sorted(ZIP_ESCAPES))
def test_a_zip_cannot_write_outside_through_its_own_links(case, project, params_with):
    members, message = ZIP_ESCAPES[case]
    archive = crafted.write_zip(project.parent / "in" / "shop.zip", members)
    err = _download_refused(_params(params_with, archive), project, message)
    assert "refusing to unpack this archive (nothing was kept)" in str(err)


def test_the_same_chain_in_a_tar_is_refused(project, params_with):
    members = [(crafted.tar_member("ok/first.jpg"), GOOD)]
    members += [(crafted.tar_member(name, tarfile.SYMTYPE, target.decode()), None) for name, target, _ in CHAIN]
    members += [(crafted.tar_member("a/b/c/d/evil.txt"), b"escaped")]
    archive = crafted.write_tar(project.parent / "in" / "shop.tar.gz", members, "w:gz")
    _download_refused(_params(params_with, archive), project, r"member 'a/b' .*(data filter|symlink)")


def test_links_inside_a_zip_are_kept(tmp_path):
    archive = crafted.write_zip(
        tmp_path / "good.zip", [("a/1.jpg", GOOD, FILE), ("b/alias.jpg", b"../a/1.jpg", LINK), ("c", b"a", LINK)]
    )
    assert extract_archive(archive, tmp_path / "out") == 1
    assert (tmp_path / "out/b/alias.jpg").is_symlink() and (tmp_path / "out/b/alias.jpg").read_bytes() == GOOD
    assert (tmp_path / "out/c").is_symlink() and (tmp_path / "out/c/1.jpg").read_bytes() == GOOD


def _patch(path: Path, local_offset: int, value: int) -> Path:
    """Set a 2-byte field of a one-member zip in both its headers (the central one sits 2 bytes further)."""
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[local + local_offset : local + local_offset + 2] = value.to_bytes(2, "little")
    data[central + local_offset + 2 : central + local_offset + 4] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "offset, value, message",
    [
        (6, 0x1, "is encrypted"),
        (8, 9, "uses compression method 9, which Python cannot read"),
    ],  # flags; method: Deflate64
    ids=["encrypted", "deflate64"],
)
def test_encrypted_zips_and_unknown_methods_are_refused_by_member(offset, value, message, tmp_path):
    archive = _patch(crafted.write_zip(tmp_path / "odd.zip", [("ok/a.jpg", GOOD, FILE)]), offset, value)
    with pytest.raises(GuieError, match=rf"member 'ok/a.jpg' {message}"):
        extract_archive(archive, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


# --- decompression bombs and disk space ---

# four members of half a MiB each
HALVES = [(f"ok/{i}.bin", NOISE[i * MIB // 2 : (i + 1) * MIB // 2]) for i in range(4)]

BOMBS = {
    # name: (members, download caps, message)
    "zip of zeros over the ratio": (
        "zip", [("ok/first.jpg", GOOD), ("ok/zeros.bin", ZEROS)], {},
        r"member 'ok/zeros.bin' unpacks to \d+ times its compressed size, over the limit of 200 "
        r"\(data.download.max_compression_ratio\)",
    ),
    "tar.gz of zeros over the ratio": (
        "tar.gz", [("ok/first.jpg", GOOD), ("ok/zeros.bin", ZEROS)], {},
        r"member 'ok/zeros.bin' unpacks to \d+ times the archive's \d+ bytes, over the limit of 200 "
        r"\(data.download.max_compression_ratio\)",
    ),
    "zip member over max_member_gib": (
        "zip", [("ok/first.jpg", GOOD), ("ok/noise.bin", NOISE)], {"max_member_gib": 1 / 1024},
        r"member 'ok/noise.bin' unpacks to more than the limit of 0.000977 GiB per member "
        r"\(data.download.max_member_gib\)",
    ),
    "tar.xz member over max_member_gib": (
        "tar.xz", [("ok/first.jpg", GOOD), ("ok/noise.bin", NOISE)], {"max_member_gib": 1 / 1024},
        r"member 'ok/noise.bin' unpacks to more than the limit .*\(data.download.max_member_gib\)",
    ),
    "zip over max_unpacked_gib": (
        "zip", HALVES, {"max_unpacked_gib": 1.5 / 1024},
        r"member 'ok/3.bin' takes the archive past the limit of 0.00146 GiB unpacked "
        r"\(data.download.max_unpacked_gib\)",
    ),
    "tar over max_unpacked_gib": (
        "tar", HALVES, {"max_unpacked_gib": 1.5 / 1024},
        r"member 'ok/3.bin' takes the archive past the limit of 0.00146 GiB unpacked "
        r"\(data.download.max_unpacked_gib\)",
    ),
    "not enough free disk": (
        "zip", [("ok/first.jpg", GOOD)], {"min_free_gib": 1e9},
        r"not enough free disk to unpack .* data.download.min_free_gib keeps 1e\+09 GiB free; free some space",
    ),
}  # fmt: skip


def _archive(folder: Path, kind: str, members: list[tuple[str, bytes]]) -> Path:
    if kind == "zip":
        return crafted.write_zip(folder / "shop.zip", [(n, d, FILE) for n, d in members], zipfile.ZIP_DEFLATED)
    mode = {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}[kind]
    return crafted.write_tar(folder / f"shop.{kind}", [(crafted.tar_member(n), d) for n, d in members], mode)


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_bombs_are_refused_naming_the_member_and_the_limit(case, project, params_with):
    kind, members, caps, message = BOMBS[case]
    archive = _archive(project.parent / "in", kind, members)
    err = _download_refused(_params(params_with, archive, **caps), project, message)
    assert str(err).startswith(str(archive))
    assert "\n" not in str(err)


def test_under_the_caps_the_same_archive_unpacks(tmp_path):
    from guie.params.data import DownloadParams

    archive = _archive(tmp_path, "tar.gz", [("ok/zeros.bin", ZEROS)])
    assert extract_archive(archive, tmp_path / "out", DownloadParams(max_compression_ratio=1e6)) == 1
    assert (tmp_path / "out/ok/zeros.bin").stat().st_size == len(ZEROS)


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_unpacked_gib", 0),
        ("max_member_gib", -1),
        ("max_compression_ratio", 0.5),
        ("min_free_gib", -1),
        ("max_gib", 1),
    ],
)
def test_bad_caps_name_the_key(key, value):
    from guie.params.load import parse_params

    raw = tiny_params_dict()
    raw["data"]["download"] = {key: value}
    with pytest.raises(GuieError, match=rf"data\.download\.{key}"):
        parse_params(raw)


# --- staging folders left by a killed run ---


def test_stale_staging_folders_are_removed_by_the_next_download(project, params_with):
    raw = project / "data" / "raw"
    stale = [raw / f"{STAGING_PREFIX}shop.k2j4h5gf", raw / f"{STAGING_PREFIX}shop.k2j4h5gf.old", raw / ".shop.ab_12cde"]
    for folder in stale:
        (folder / "deep").mkdir(parents=True)
        (folder / "deep" / "half.bin").write_bytes(b"x" * 1000)
    keep = [raw / ".not-ours", raw / ".unknown.abcdefgh"]  # other names, other sources: left alone
    for folder in keep:
        folder.mkdir()
    archive = crafted.write_zip(project.parent / "in" / "shop.zip", [("ok/first.jpg", GOOD, FILE)])
    download_sources(params_with(_url_sources(archive)), project, Layout(project).raw, Layout(project).downloads_dir)
    assert sorted(p.name for p in raw.iterdir()) == sorted([".not-ours", ".unknown.abcdefgh", "pca", "shop"])


def test_a_second_download_into_the_same_folder_is_refused(project, params_with):
    import fcntl

    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / f"{STAGING_PREFIX}shop.k2j4h5gf").mkdir()  # the running download's staging folder
    archive = crafted.write_zip(project.parent / "in" / "shop.zip", [("ok/first.jpg", GOOD, FILE)])
    fd = os.open(raw, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the running `guie download` holds it
        with pytest.raises(GuieError, match=r"another `guie download` is writing into .*; wait for it to finish"):
            download_sources(
                params_with(_url_sources(archive)), project, Layout(project).raw, Layout(project).downloads_dir
            )
        assert (raw / f"{STAGING_PREFIX}shop.k2j4h5gf").is_dir()  # the other run's work is untouched
    finally:
        os.close(fd)
    download_sources(
        params_with(_url_sources(archive)), project, Layout(project).raw, Layout(project).downloads_dir
    )  # once it is gone
    assert sorted(p.name for p in raw.iterdir()) == ["pca", "shop"]


def _kill_mid_unpack(project: Path, params_file: Path) -> subprocess.CompletedProcess:
    """`guie download` killed by the kernel while it writes a member: RLIMIT_FSIZE + SIGXFSZ's default
    action end it on the spot, with no cleanup, as SIGKILL would, and always at the same byte."""
    driver = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"  # Python ignores it; a real kill cannot be ignored
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"  # no core file left behind
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from guie.cli import app\n"
        "app(['download', '--params', sys.argv[1], '--root', sys.argv[2]])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, "-c", driver, str(params_file), str(project)],
        capture_output=True,
        env=env,
        cwd=project.parent,
        timeout=120,
    )


def test_a_download_killed_mid_unpack_is_cleaned_up_by_the_next(project):
    archive = crafted.write_zip(
        project.parent / "in" / "shop.zip", [("ok/first.jpg", GOOD, FILE), ("ok/big.bin", NOISE, FILE)]
    )
    raw_params = tiny_params_dict()
    raw_params["data"]["sources"] = _url_sources(archive)
    params_file = write_params(project.parent / "in" / "params.yaml", raw_params)

    killed = _kill_mid_unpack(project, params_file)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr.decode()[-2000:]
    raw = project / "data" / "raw"
    (left,) = raw.iterdir()  # the staging folder, with the first member and part of the second
    assert left.name.startswith(f"{STAGING_PREFIX}shop.")
    assert (left / "ok/first.jpg").read_bytes() == GOOD and 0 < (left / "ok/big.bin").stat().st_size < len(NOISE)

    from guie.params.load import load_params

    download_sources(load_params(params_file), project, Layout(project).raw, Layout(project).downloads_dir)
    assert sorted(p.name for p in raw.iterdir()) == ["pca", "shop"]
    assert (raw / "shop/ok/big.bin").read_bytes() == NOISE
