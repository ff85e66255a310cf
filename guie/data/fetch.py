"""Fetch one file from an http(s) URL: resumable, verified, and written atomically.

Bytes go to `<name>.part`; after a network failure the next attempt (or the next run) asks for
the rest with an HTTP Range request and appends. The finished file is checked against its
sha256 and only then renamed to its final name, so the final name never holds a partial or
unverified file. A checksum mismatch deletes the partial file: it cannot be resumed into a
good one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from guie.errors import GuieError
from guie.progress import progress_bar

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket read: a stalled server fails the attempt instead of hanging the stage
ATTEMPTS = 4
BACKOFF_S = 1.0  # doubled after each failed attempt
USER_AGENT = "guie (urllib)"


def file_name(url: str) -> str:
    """The URL path's last segment, decoded; never a path of its own."""
    name = unquote(urlparse(url).path).replace("\\", "/").rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") else "download"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(url: str, expected: str, got: str, hint: str) -> GuieError:
    return GuieError(
        f"{url}: sha256 mismatch (expected {expected}, got {got}); {hint}. Check the URL and the sha256 "
        "in params.yaml, then re-run `guie download`."
    )


class _Incomplete(Exception):
    """The server closed the connection before sending everything it announced."""


def _get(url: str, part: Path) -> None:
    """One attempt: continue `part` from its current size to the end of the file."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the .part is already whole
            return
        raise
    with response:
        if offset and response.status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise _Incomplete(f"the server resumed at the wrong offset ({response.headers.get('Content-Range')})")
        else:
            offset = 0  # no Range support (200): start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            part.open("r+b" if offset else "wb") as out,
            progress_bar(f"downloading {part.name[:-5]}", total) as advance,
        ):
            out.seek(offset)
            out.truncate()
            advance(offset)
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as err:
                    out.write(err.partial)
                    raise _Incomplete("the connection closed early") from None
                if not chunk:
                    break
                out.write(chunk)
                advance(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise _Incomplete(f"got {part.stat().st_size} of {total} bytes")


def _attempt(url: str, part: Path) -> str | None:
    """One try at the download: None when it finished, else why it failed in a way another try may fix.
    Raises GuieError when no retry can help (a client error, a malformed or unreachable URL)."""
    try:
        _get(url, part)
    except urllib.error.HTTPError as err:
        if err.code not in (408, 429) and err.code < 500:
            raise GuieError(f"{url}: the server answered HTTP {err.code} ({err.reason}); check the URL") from None
        return f"HTTP {err.code}"
    except ValueError as err:  # urllib's verdict on a malformed URL
        raise GuieError(f"{url}: not a valid URL ({err})") from None
    except (_Incomplete, urllib.error.URLError, OSError, http.client.HTTPException) as err:
        if isinstance(err, urllib.error.URLError) and not isinstance(err.reason, OSError):
            raise GuieError(f"{url}: cannot download ({err.reason}); check the URL") from None
        return str(err) if isinstance(err, _Incomplete) else f"{type(err).__name__}: {err}"
    return None


def _download(url: str, part: Path) -> None:
    """Up to ATTEMPTS tries, backing off between them, each resuming `part`."""
    for attempt in range(1, ATTEMPTS + 1):
        last = _attempt(url, part)
        if last is None:
            return
        if attempt == ATTEMPTS:
            have = part.stat().st_size if part.exists() else 0
            raise GuieError(
                f"{url}: download failed after {ATTEMPTS} tries ({last}); {have} bytes are kept in {part}: "
                "re-run `guie download` to resume"
            )
        time.sleep(BACKOFF_S * 2 ** (attempt - 1))


def fetch_url(url: str, dest_dir: Path, sha256: str) -> Path:
    """Download `url` into `dest_dir` (kept as a download cache); returns the verified file.

    A file already there with the right sha256 is reused without touching the network.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / file_name(url)
    part = final.with_name(final.name + ".part")
    if final.is_file():
        if sha256_of(final) == sha256:
            return final
        final.unlink()  # stale (the params' sha256 changed): fetch again
    _download(url, part)
    got = sha256_of(part)
    if got != sha256:
        part.unlink()
        raise _mismatch(url, sha256, got, f"the download was deleted ({part})")
    os.replace(part, final)
    return final


def verify_file(path: Path, sha256: str, url: str) -> None:
    """Check a local (file://) source against its sha256, when one is given."""
    if sha256 and (got := sha256_of(path)) != sha256:
        raise _mismatch(url, sha256, got, "the file was left as it is")
