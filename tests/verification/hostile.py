"""Scripted models that misbehave inside verify's child, and archives that misbehave before it."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import torch

from guie.model.embedder import l2_normalize
from guie.stages.export import zip_model


def _embed(x: torch.Tensor) -> torch.Tensor:
    return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64] + 1.0)


class Good(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _embed(x)


class WritesAFile(torch.nn.Module):
    """Creates or overwrites `path` (torch.from_file maps it shared and read-write)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8).fill_(66)
        return _embed(x) + f.float().sum() * 0.0  # used, so TorchScript keeps the call


class ReadsAFile(torch.nn.Module):
    """Puts the first bytes of `path` into its output (unit norm kept: the contract holds)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        secret = torch.from_file(self.path, shared=False, size=8, dtype=torch.uint8).float()
        return l2_normalize(_embed(x) + torch.cat([secret, torch.zeros(56)]).unsqueeze(0))


class Prints(torch.nn.Module):
    """Prints a line and the batch size (a bare int on what used to be verify's protocol channel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("hello from the model")
        print(x.shape[0])
        return _embed(x)


class PrintsForever(torch.nn.Module):
    """Never returns, printing a line now and then: a per-line timeout would never fire."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        i = 0
        while bool((y >= 0).all()):
            y = y + 1.0
            i += 1
            if i % 2000 == 0:
                print("still working", i)
        return _embed(y)


class NeverReturns(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        while bool((y >= 0).all()):
            y = y + 1.0
        return _embed(y)


class Constant(torch.nn.Module):
    """One unit vector for every image: meets the contract, would score about 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(torch.ones(1, 64))


class Allocates(torch.nn.Module):
    """Asks for 2 GiB in one tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(1 << 29)
        return _embed(x) + big[:64].unsqueeze(0) * 0.0


def archive_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def submission(path: Path, module: torch.nn.Module) -> Path:
    path.write_bytes(zip_model(archive_bytes(module)))
    return path


def with_record(path: Path, record: str, chunks, replace: bool = False) -> Path:
    """A submission of Good's archive plus `record` (under the archive folder), deflated from `chunks` as
    they come (no bomb is ever whole in memory), in place of Good's own `record` when `replace`."""
    inner = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive_bytes(Good()))) as src, zipfile.ZipFile(inner, "w") as dst:
        root = src.namelist()[0].split("/", 1)[0]
        for info in src.infolist():
            if not (replace and info.filename == f"{root}/{record}"):
                dst.writestr(info, src.read(info))
        info = zipfile.ZipInfo(f"{root}/{record}")
        info.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(info, "w") as out:
            for chunk in chunks:
                out.write(chunk)
    path.write_bytes(zip_model(inner.getvalue()))
    return path


def encrypted(data: bytes) -> bytes:
    """`data` (a zip) with every member's encryption flag set, as a password-protected zip has it."""
    out = bytearray(data)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = out.find(signature)
        while at >= 0:
            out[at + flags_at] |= 0x1
            at = out.find(signature, at + 4)
    return bytes(out)
