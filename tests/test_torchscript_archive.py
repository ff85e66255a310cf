"""Archive inspection finds what torch 1.11 refuses, and stripping makes exports reproducible."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch111 import run_torch111, torch111_or_skip

from guie.errors import GuieError
from guie.torchscript_archive import (
    LEGACY_UNREADABLE_OPS,
    archive_ops,
    archive_version,
    container_problems,
    legacy_problems,
    rewrite_archive,
    strip_debug_info,
)

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


class GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.linear(x))


class ErfGeluNet(GeluNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return 0.5 * y * (1.0 + torch.erf(y * 0.7071067811865476))


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class InterpolateNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=[6, 6], mode="bicubic", antialias=True, align_corners=False)


class DirectBicubicNet(nn.Module):
    """The resize call that loads in torch 1.11 (it has no uint8 kernel there: pass floats)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._upsample_bicubic2d_aa(x, [6, 6], False, None, None)


def _squash(x: torch.Tensor) -> torch.Tensor:  # compiled into the archive as its own function
    return torch.tanh(x)


class HelperNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _squash(x) * 2.0


def _inputs(net: type[nn.Module]) -> torch.Tensor:
    shape = {AttentionNet: (2, 5, 8), InterpolateNet: (1, 3, 9, 11), DirectBicubicNet: (1, 3, 9, 11)}.get(net, (2, 8))
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def _save(net: type[nn.Module]) -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net().eval()), buffer)
    return buffer.getvalue()


def test_version_is_read_from_the_old_and_the_new_record() -> None:
    gelu, erf = _save(GeluNet), _save(ErfGeluNet)
    # torch writes formats >= 6 to .data/version and older ones to the top-level record
    assert "archive/.data/version" in zipfile.ZipFile(io.BytesIO(gelu)).namelist()
    assert "archive/version" in zipfile.ZipFile(io.BytesIO(erf)).namelist()
    assert archive_version(gelu) == 10  # aten::gelu's upgrader
    assert archive_version(erf) <= 9


def test_version_from_a_path_whose_archive_folder_is_named_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "saved_model.pt"
    torch.jit.save(torch.jit.script(ErfGeluNet()), str(path))
    assert zipfile.ZipFile(path).namelist()[0].startswith("saved_model/")
    assert archive_version(path) == archive_version(str(path)) == archive_version(_save(ErfGeluNet))


def test_ops_of_gelu_and_erf_gelu() -> None:
    gelu, erf = archive_ops(_save(GeluNet)), archive_ops(_save(ErfGeluNet))
    assert {"aten::gelu", "aten::linear"} <= gelu and "aten::erf" not in gelu
    assert {"aten::erf", "aten::linear", "aten::mul"} <= erf and "aten::gelu" not in erf


def test_ops_include_compiled_helpers_but_not_calls_to_them() -> None:
    ops = archive_ops(_save(HelperNet))
    assert {"aten::tanh", "aten::mul"} <= ops
    assert all("::" in op and not op.startswith("__torch__") for op in ops)


@pytest.mark.parametrize(
    ("net", "expected"),
    [
        (GeluNet, ["version 10", "aten::gelu", "erf"]),
        (AttentionNet, ["aten::scaled_dot_product_attention", "aten::_native_multi_head_attention", "aten::pad"]),
        (InterpolateNet, ["aten::_upsample_lanczos2d_aa", "_upsample_bicubic2d_aa("]),
        (ErfGeluNet, []),
        (DirectBicubicNet, []),
    ],
)
def test_legacy_problems(net: type[nn.Module], expected: list[str]) -> None:
    problems = legacy_problems(_save(net), "1.11")
    text = "\n".join(problems)
    assert all(fragment in text for fragment in expected), text
    assert bool(problems) == bool(expected)


def test_bad_inputs_raise_actionable_errors(tmp_path: Path) -> None:
    with pytest.raises(GuieError, match="unknown target torch '1.10'"):
        legacy_problems(_save(ErfGeluNet), "1.10")
    with pytest.raises(GuieError, match="not found"):
        archive_version(tmp_path / "missing.pt")
    with pytest.raises(GuieError, match="not a TorchScript archive"):
        archive_ops(b"plain bytes")
    no_version = io.BytesIO()
    with zipfile.ZipFile(no_version, "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    with pytest.raises(GuieError, match="neither archive/version nor archive/.data/version"):
        archive_version(no_version.getvalue())


def test_strip_debug_info_keeps_a_loadable_model() -> None:
    raw = _save(ErfGeluNet)
    stripped = strip_debug_info(raw)
    names = zipfile.ZipFile(io.BytesIO(stripped)).namelist()
    assert not [n for n in names if n.endswith(".debug_pkl")]
    # torch's writer adds its own serialization id, derived from the records it wrote
    assert names[-1] == "archive/.data/serialization_id"
    kept = [n for n in zipfile.ZipFile(io.BytesIO(raw)).namelist() if n in names[:-1]]
    assert kept == names[:-1]  # same order
    assert strip_debug_info(stripped) == stripped
    assert archive_version(stripped) == archive_version(raw)
    x = _inputs(ErfGeluNet)
    expected = torch.jit.load(io.BytesIO(raw))(x)
    torch.testing.assert_close(torch.jit.load(io.BytesIO(stripped))(x), expected, rtol=0, atol=0)


def test_saving_one_scripted_module_twice_gives_the_same_bytes() -> None:
    scripted = torch.jit.script(AttentionNet().eval())
    first, second = io.BytesIO(), io.BytesIO()
    torch.jit.save(scripted, first)
    torch.jit.save(scripted, second)
    assert first.getvalue() == second.getvalue()


NET_SOURCE = textwrap.dedent(
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.erf(self.linear(x))
    """
)
EXPORT_NET = textwrap.dedent(
    """
    import io, sys, warnings
    import torch
    warnings.simplefilter("ignore")
    from netmod import Net
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Net().eval()), buffer)
    open(sys.argv[1], "wb").write(buffer.getvalue())
    """
)


def test_stripped_archives_do_not_depend_on_the_checkout_path(tmp_path: Path) -> None:
    runs = []
    for checkout in ("checkout_a", "checkout_b"):
        folder = tmp_path / checkout
        folder.mkdir()
        (folder / "netmod.py").write_text(NET_SOURCE)
        # one hash seed for both: the order of a module's Final constants follows it
        env = {**os.environ, "PYTHONPATH": str(folder), "PYTHONHASHSEED": "0"}
        runs.append(
            subprocess.Popen(
                [sys.executable, "-c", EXPORT_NET, str(folder / "net.pt")], env=env, stderr=subprocess.PIPE, text=True
            )
        )
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()[-3000:]
    raw_a, raw_b = ((tmp_path / c / "net.pt").read_bytes() for c in ("checkout_a", "checkout_b"))
    with zipfile.ZipFile(io.BytesIO(raw_a)) as archive:
        debug_maps = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".debug_pkl"))
    assert str(tmp_path / "checkout_a" / "netmod.py").encode() in debug_maps  # absolute source paths
    assert raw_a != raw_b
    assert strip_debug_info(raw_a) == strip_debug_info(raw_b)


# ---- against a real torch 1.11 (skipped unless tests/torch111.py found or built one) ----

REGISTRY = "import json, torch; print(json.dumps(sorted({s.name for s in torch._C._jit_get_all_schemas()})))"


def test_unreadable_ops_are_the_registry_difference() -> None:
    python = torch111_or_skip()
    old = set(json.loads(run_torch111(python, REGISTRY).stdout))
    ours = {s.name for s in torch._C._jit_get_all_schemas() if s.name.split("::")[0] in ("aten", "prim")}
    listed = LEGACY_UNREADABLE_OPS["1.11"]
    assert "aten::gelu" in old  # listed for the file-format version its upgrader forces, not as missing
    assert listed - {"aten::gelu"} == ours - old, (
        f"torch {torch.__version__} changed the set; regenerate _ATEN_NEW_SINCE_1_11/_PRIM_NEW_SINCE_1_11"
    )


LOAD_ALL = textwrap.dedent(
    """
    import json, sys, torch
    report = {}
    for path in sys.argv[1:]:
        try:
            torch.jit.load(path)
            report[path] = "ok"
        except Exception as exc:
            report[path] = str(exc)
    print(json.dumps(report))
    """
)


def test_torch111_loads_exactly_the_archives_without_problems(tmp_path: Path) -> None:
    python = torch111_or_skip()
    paths = {}
    for net in (GeluNet, ErfGeluNet, AttentionNet, InterpolateNet, DirectBicubicNet):
        paths[net] = tmp_path / f"{net.__name__}.pt"
        paths[net].write_bytes(strip_debug_info(_save(net)))
    report = json.loads(run_torch111(python, LOAD_ALL, *map(str, paths.values())).stdout)
    for net, path in paths.items():
        problems = legacy_problems(path)
        assert (report[str(path)] == "ok") == (problems == []), (net.__name__, report[str(path)], problems)
    assert "maximum supported version for reading is 9" in report[str(paths[GeluNet])]
    assert "Unknown builtin op: aten::_upsample_lanczos2d_aa" in report[str(paths[InterpolateNet])]


def test_torch111_aborts_on_a_load_error_unless_debug_info_is_stripped(tmp_path: Path) -> None:
    python = torch111_or_skip()
    (tmp_path / "raw.pt").write_bytes(_save(InterpolateNet))
    done = subprocess.run(
        [str(python), "-c", LOAD_ALL, str(tmp_path / "raw.pt")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode < 0, done.stdout  # killed by SIGABRT while formatting the error from debug_pkl


RESIZE_IN_TORCH111 = textwrap.dedent(
    """
    import sys, torch
    model = torch.jit.load(sys.argv[1])
    torch.save([model(x) for x in torch.load(sys.argv[2])], sys.argv[3])
    try:
        torch.ops.aten._upsample_bicubic2d_aa(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), [4, 4], False, None, None)
        print("uint8 ok")
    except RuntimeError:
        print("uint8 unsupported")
    """
)


class Resize224(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._upsample_bicubic2d_aa(x, [224, 224], False, None, None)


def test_direct_bicubic_aa_resize_matches_interpolate_and_torch111(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (1, 3, h, w), generator=generator).float() for h, w in ((300, 451), (100, 80))]
    model = torch.jit.script(Resize224())
    expected = [model(x) for x in images]
    for x, y in zip(images, expected, strict=True):
        interpolated = F.interpolate(x, size=[224, 224], mode="bicubic", antialias=True, align_corners=False)
        torch.testing.assert_close(y, interpolated, rtol=0, atol=0)
    python = torch111_or_skip()
    torch.jit.save(model, str(tmp_path / "resize.pt"))
    (tmp_path / "resize.pt").write_bytes(strip_debug_info((tmp_path / "resize.pt").read_bytes()))
    torch.save(images, tmp_path / "x.pt")
    done = run_torch111(python, RESIZE_IN_TORCH111, *(str(tmp_path / n) for n in ("resize.pt", "x.pt", "y.pt")))
    assert done.stdout.strip() == "uint8 unsupported"  # so the exported model must cast to float first
    for old, new in zip(torch.load(tmp_path / "y.pt"), expected, strict=True):
        torch.testing.assert_close(old, new, rtol=0, atol=1e-3)  # float rounding on a 0..255 scale


def _rezip(raw: bytes, compression: int = zipfile.ZIP_STORED) -> bytes:
    """The archive's records rewritten by Python's zipfile (as guie did before), debug records dropped."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", compression=compression) as dst:
        for info in src.infolist():
            if not info.filename.endswith(".debug_pkl"):
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), src.read(info), compression)
    return out.getvalue()


def _zip64_archive(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> bytes:
    # what zipfile writes for a 2.4 GB float32 ViT-H, on a few KB: member headers with zip64 records
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZIP64_LIMIT", 64)
        return _rezip(raw)


def test_zip64_member_records_are_refused_statically_and_by_torch111(tmp_path: Path, monkeypatch) -> None:
    raw = _save(ErfGeluNet)
    zip64 = tmp_path / "zip64.pt"
    zip64.write_bytes(_zip64_archive(raw, monkeypatch))
    assert container_problems(_rezip(raw)) == []  # the same records below the limit are fine
    (problem,) = container_problems(zip64)
    assert "zip64 records in member headers" in problem and "guie export" in problem
    assert any("zip64" in p for p in legacy_problems(zip64))
    python = torch111_or_skip()
    report = json.loads(run_torch111(python, LOAD_ALL, str(zip64)).stdout)
    assert "invalid header or archive is corrupted" in report[str(zip64)]


def test_rewritten_archive_loads_in_torch111_and_is_byte_identical(tmp_path: Path, monkeypatch) -> None:
    raw = _save(ErfGeluNet)
    (tmp_path / "zip64.pt").write_bytes(_zip64_archive(raw, monkeypatch))
    rewrite_archive(tmp_path / "zip64.pt", tmp_path / "a.pt")
    rewrite_archive(tmp_path / "zip64.pt", tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes() == strip_debug_info(raw)
    assert legacy_problems(tmp_path / "a.pt") == []
    x = _inputs(ErfGeluNet)
    torch.save(x, tmp_path / "x.pt")
    python = torch111_or_skip()
    script = "import sys, torch; torch.save(torch.jit.load(sys.argv[1])(torch.load(sys.argv[2])), sys.argv[3])"
    run_torch111(python, script, str(tmp_path / "a.pt"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt"))
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), torch.jit.load(io.BytesIO(raw))(x), rtol=0, atol=1e-6)


def test_compression_torch_cannot_decode_is_refused() -> None:
    (problem,) = container_problems(_rezip(_save(ErfGeluNet), zipfile.ZIP_BZIP2))
    assert "compressed other than stored or deflated" in problem


def test_an_archive_over_4_gib_is_refused_naming_export_half(monkeypatch) -> None:
    # the size rule, on a small archive with the limit lowered (no test writes 4 GiB)
    monkeypatch.setattr("guie.torchscript_archive.LEGACY_MAX_ARCHIVE_BYTES", 1000)
    (problem,) = container_problems(strip_debug_info(_save(ErfGeluNet)))
    assert "up to 4 GiB" in problem and "export.half: true" in problem
