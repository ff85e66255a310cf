"""Decoding one file the way the host does, in worker processes that die with their parent.

The workers die with the stage: each asks the kernel for SIGKILL when its parent dies (Linux
PR_SET_PDEATHSIG; elsewhere a thread watches the parent's pid), so a killed `guie manifest`
leaves no process behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import signal
import stat
import sys
import threading
import time

from PIL import Image, UnidentifiedImageError

# PIL's decompression-bomb threshold, which `host_decode` in training also enforces: bigger
# images are rejected from their header, before any pixel is decoded.
PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS


PR_SET_PDEATHSIG = 1


PARENT_POLL_S = 1.0  # the watchdog's period where PR_SET_PDEATHSIG does not exist


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def die_with_parent(parent: int) -> None:
    """Make this (worker) process end as soon as `parent` dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before prctl: no signal will come
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="guie-parent-watch").start()


def init_worker(parent: int) -> None:
    die_with_parent(parent)
    # checked against PIXEL_LIMIT by `inspect_image` itself, so the size can go in the reason
    Image.MAX_IMAGE_PIXELS = None


def _file_problem(path: str) -> str:
    """Why `path` is no file to decode, or "" when it is one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing: no such file"
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the worker forever
        return "not a regular file: a directory, device or pipe"
    if st.st_size == 0:
        return "empty file"
    return ""


def _decode_file(path: str) -> tuple[str, int, int, str]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()  # in chunks: a huge file never sits in memory
        f.seek(0)
        with Image.open(f) as img:
            width, height = img.size
            if PIXEL_LIMIT and width * height > PIXEL_LIMIT:
                return (
                    "",
                    width,
                    height,
                    f"too large: {width}x{height} declared, over the decompression-bomb limit of {PIXEL_LIMIT} pixels",
                )
            img.load()  # decodes every pixel: truncated or corrupt data fails here
            if img.mode != "RGB":
                img.convert("RGB")  # the host's conversion (an RGB image would only be copied)
    return digest, width, height, ""


def _decode(path: str) -> tuple[str, int, int, str]:
    """(sha256, width, height, "") of a file PIL decodes, as the host does; else a reject reason."""
    try:
        return _decode_file(path)
    except UnidentifiedImageError:
        return "", 0, 0, "not an image: no image format recognises the contents"
    except Image.DecompressionBombError as err:
        return "", 0, 0, f"too large: {err}"
    except OSError as err:
        if err.errno is not None:  # the file system's error, not PIL's "image file is truncated"
            return "", 0, 0, f"unreadable: {err.strerror}"
        return "", 0, 0, f"undecodable: {type(err).__name__}: {err}"[:240]
    except Exception as err:  # PIL raises many types for corrupt input
        return "", 0, 0, f"undecodable: {type(err).__name__}: {err}"[:240]


def inspect_image(path: str, min_side: int) -> tuple[str, int, int, str]:
    """Decode one file as the host would; returns (sha256, width, height, reject reason or "")."""
    problem = _file_problem(path)
    if problem:
        return "", 0, 0, problem
    digest, width, height, reason = _decode(path)
    if reason:
        return digest, width, height, reason
    if min(width, height) < min_side:
        return "", width, height, f"too small: {width}x{height} (data.manifest.min_image_side is {min_side})"
    return digest, width, height, ""


def inspect_args(args: tuple[str, int]) -> tuple[str, int, int, str]:
    return inspect_image(*args)
