"""Real image files of every awkward kind the manifest must survive, built in memory, and the
archives (zip, tar) that carry them, hostile ones included.

Each image builder returns the file's bytes; `write_class_folder` lays out a folder source;
`write_zip` / `write_tar` write an archive member by member, exactly as given.
"""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _noise(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    return _save(Image.fromarray(_noise(w, h, seed)), "JPEG", quality=90)


def png(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    return _save(Image.fromarray(_noise(w, h, seed)), "PNG")


def truncated_jpeg() -> bytes:
    data = jpeg(96, 96, seed=1)
    return data[: len(data) // 2]


def png_with_alpha() -> bytes:
    return _save(Image.fromarray(_noise(64, 48, 2, channels=4), "RGBA"), "PNG")


def palette_png() -> bytes:
    return _save(Image.fromarray(_noise(64, 48, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def png_16bit() -> bytes:
    data = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    return _save(Image.fromarray(data), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(Image.fromarray(_noise(64, 48, 4, channels=4), "CMYK"), "JPEG")


def grayscale_jpeg() -> bytes:
    return _save(Image.fromarray(_noise(64, 48, 5, channels=1), "L"), "JPEG")


def exif_rotated_jpeg(w: int = 80, h: int = 40) -> bytes:
    """Stored w x h, tagged "rotate 90 CW to display" (orientation 6), as phones write them."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(_noise(w, h, 6)), "JPEG", exif=exif.tobytes())


def one_pixel_png() -> bytes:
    return _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20000) -> bytes:
    """A valid PNG header declaring side x side RGB pixels, with a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def write_class_folder(
    root: Path, classes: dict[str, int], seed: int = 0, size: tuple[int, int] = (64, 48)
) -> list[Path]:
    """root/<class>/<i>.jpg, distinct noise images; returns the paths."""
    paths = []
    for k, (cls, n) in enumerate(sorted(classes.items())):
        for i in range(n):
            path = root / cls / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(*size, seed=seed * 100_000 + k * 1000 + i))
            paths.append(path)
    return paths


FILE = stat.S_IFREG | 0o644
LINK = stat.S_IFLNK | 0o777


def write_zip(path: Path, members: list[tuple[str, bytes, int]], compression: int = zipfile.ZIP_STORED) -> Path:
    """(name, data, unix mode) members; a LINK member's data is its target."""
    with zipfile.ZipFile(path, "w", compression) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a name given twice is on purpose
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, (2015, 1, 1, 0, 0, 0))
            info.create_system = 3  # unix: the file type lives in the high bits
            info.external_attr = mode << 16
            info.compress_type = compression
            zf.writestr(info, data)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    """(TarInfo, data or None) members; mode "w:gz", "w:xz", ... compresses."""
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path
