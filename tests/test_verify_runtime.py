"""`guie verify --runtime PYTHON`: the model loaded and called in another interpreter (the scorer's
torch 1.11), outputs compared with this torch; a dead or failing interpreter is a clean failure."""

from __future__ import annotations

import io
import json
import sys
import warnings

import pytest
import torch
from support import tiny_params_dict, write_params
from torch111 import torch111_or_skip
from typer.testing import CliRunner

from guie.cli import app
from guie.model.embedder import l2_normalize
from guie.stages.export import build_eager, export_submission, scripted_bytes, zip_model
from guie.stages.verify import RUNTIME_TOLERANCE, host_inputs, run_host_calls, verify_submission
from guie.torchscript_archive import strip_debug_info

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


class Good(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64] + 1.0)


class Gelu(torch.nn.Module):
    """aten::gelu: archive version 10, which torch 1.11 refuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(torch.nn.functional.gelu(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64]) + 1.0)


class Interpolate(torch.nn.Module):
    """F.interpolate scripts aten::_upsample_lanczos2d_aa, an op torch 1.11 does not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.interpolate(x.float(), size=[8, 8], mode="bicubic", antialias=True)
        return l2_normalize(small.flatten(1)[:, :64] + 1.0)


class Echo(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def _raw(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def _zip(tmp_path, model_bytes: bytes, name: str = "submission.zip"):
    path = tmp_path / name
    path.write_bytes(zip_model(model_bytes))
    return path


def _runtime_check(report):
    return next(c for c in report.checks if c.name.startswith("runtime "))


def test_same_torch_runtime_gives_identical_outputs(tmp_path):
    report = verify_submission(
        _zip(tmp_path, scripted_bytes(torch.jit.script(Good()))), runtime=sys.executable, estimate_time=False
    )
    assert report.passed, report.failures
    check = _runtime_check(report)
    assert check.values["max_abs_error"] == 0.0 and f"torch {torch.__version__}" in check.detail


def test_a_runtime_killed_by_a_signal_is_a_clean_failure(tmp_path):
    dies = tmp_path / "python"
    dies.write_text("#!/bin/sh\nkill -ABRT $$\n")
    dies.chmod(0o755)
    report = verify_submission(
        _zip(tmp_path, scripted_bytes(torch.jit.script(Good()))), runtime=dies, estimate_time=False
    )
    assert not report.passed
    assert "killed by SIGABRT" in _runtime_check(report).detail


def test_a_missing_runtime_is_a_clean_failure(tmp_path):
    report = verify_submission(
        _zip(tmp_path, scripted_bytes(torch.jit.script(Good()))),
        runtime=tmp_path / "nope" / "python",
        estimate_time=False,
    )
    assert "cannot run" in _runtime_check(report).detail


# ---- against a real torch 1.11 (skipped unless tests/torch111.py found or built one) ----


def test_host_inputs_travel_to_torch111_and_back_unchanged(tmp_path):
    python = torch111_or_skip()
    inputs = host_inputs()
    (tmp_path / "echo.pt").write_bytes(strip_debug_info(_raw(Echo())))
    calls = run_host_calls(python, tmp_path / "echo.pt", inputs, timing_calls=1)
    assert calls.torch.startswith("1.11.") and calls.errors == {} and calls.seconds_per_image > 0
    assert calls.outputs.keys() == calls.again.keys() == inputs.keys()
    for name, x in inputs.items():
        assert torch.equal(calls.outputs[name], x.float()) and torch.equal(calls.again[name], x.float()), name


def test_torch111_refusing_the_archive_fails_cleanly(tmp_path):
    python = torch111_or_skip()
    # an unknown op: with 2.x debug records 1.11 aborts the process while reporting it
    aborts = verify_submission(_zip(tmp_path, _raw(Interpolate()), "raw.zip"), runtime=python, estimate_time=False)
    assert "killed by SIGABRT" in _runtime_check(aborts).detail
    unknown = verify_submission(
        _zip(tmp_path, strip_debug_info(_raw(Interpolate())), "stripped.zip"), runtime=python, estimate_time=False
    )
    assert "Unknown builtin op: aten::_upsample_lanczos2d_aa" in _runtime_check(unknown).detail
    version = verify_submission(_zip(tmp_path, _raw(Gelu()), "gelu.zip"), runtime=python, estimate_time=False)
    assert "maximum supported version for reading is 9" in _runtime_check(version).detail


@pytest.fixture(scope="module")
def exported(trained_project, tmp_path_factory):
    params, layout = trained_project
    folder = tmp_path_factory.mktemp("exported")
    export_submission(
        params,
        layout.trained("finetune"),
        layout.weights,
        layout.pca,
        folder / "submission.zip",
        folder / "export.json",
    )
    return folder / "submission.zip"


def test_exported_artifact_runs_in_torch111_like_in_this_torch(trained_project, exported):
    python = torch111_or_skip()
    params, layout = trained_project
    eager = build_eager(params, layout.trained("finetune"), layout.weights, layout.pca)
    report = verify_submission(exported, runtime=python, reference=eager)
    assert report.passed, report.failures
    assert _runtime_check(report).values["max_abs_error"] <= RUNTIME_TOLERANCE
    parity = next(c for c in report.checks if c.name == "parity with eager pipeline")
    assert parity.values["max_abs_error"] <= 1e-5


def test_cli_verify_with_checkpoint_and_runtime(trained_project, exported, tmp_path):
    params, layout = trained_project
    params_file = write_params(tmp_path / "params.yaml", tiny_params_dict())
    common = ["--params", str(params_file), "--root", str(layout.root), "--no-estimate-time"]
    result = CliRunner().invoke(
        app,
        [
            "verify",
            str(exported),
            "--json",
            "--checkpoint",
            str(layout.trained("finetune")),
            "--runtime",
            sys.executable,
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert {"parity with eager pipeline", f"runtime {sys.executable}"} <= {
        c["name"] for c in json.loads(result.output)["checks"]
    }
    missing = CliRunner().invoke(app, ["verify", str(exported), "--checkpoint", str(tmp_path / "none.pt"), *common])
    assert missing.exit_code != 0 and "none.pt" in str(missing.exception)
