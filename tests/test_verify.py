import io
import json
import os
import warnings
import zipfile

import pytest
import torch
from support import host_call_children
from tiny_submission import make_submission_zip
from typer.testing import CliRunner

from guie.cli import app
from guie.contract import SCORER_IMAGES
from guie.errors import GuieError
from guie.model.embedder import l2_normalize
from guie.stages import verify
from guie.stages.export import zip_model
from guie.stages.verify import VerifyLimits, VerifyReport, check_scorer_time, verify_submission


class Bare64(torch.nn.Module):
    """Returns [64]: the host flattens out[0] to a scalar."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64])[0]


class Unnormalised(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64] + 1.0


class NaNOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((1, 64), float("nan"))


class Dims128(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 43)[:, :128])


class GeluModel(torch.nn.Module):
    """A plain torch 2.x export: aten::gelu makes the archive version 10, unreadable by 1.11."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.gelu(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64])
        return l2_normalize(f + 1.0)


class Good(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64] + 1.0)


def _artifact(tmp_path, module, name="submission.zip"):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), buf)
    path = tmp_path / name
    path.write_bytes(zip_model(buf.getvalue()))
    return path


def _failed(report):
    return {c.name for c in report.checks if not c.passed}


def test_good_artifact_passes(tmp_path):
    report = verify_submission(_artifact(tmp_path, Good()))
    assert report.passed, report.failures
    assert {"zip", "load", "call 1x1", "call 37x2000", "call cmyk jpeg", "readable by torch 1.11"} <= {
        c.name for c in report.checks
    }


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (Bare64(), "must be [1, 64]"),
        (Unnormalised(), "L2 norm"),
        (NaNOut(), "non-finite"),
        (Dims128(), "128 values instead of 64"),
    ],
)
def test_wrong_outputs_fail_with_their_own_message(tmp_path, module, message):
    report = verify_submission(_artifact(tmp_path, module))
    assert not report.passed
    assert any(message in f for f in report.failures), report.failures


def test_plain_gelu_export_is_unreadable_by_torch_111(tmp_path):
    report = verify_submission(_artifact(tmp_path, GeluModel()))
    assert _failed(report) == {"readable by torch 1.11"}
    assert any("version" in f or "gelu" in f for f in report.failures)


def test_wrong_member_name(tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.pt", b"x")
    report = verify_submission(path)
    assert not report.passed and "exactly ['saved_model.pt']" in report.failures[0]


def test_extra_members(tmp_path):
    path = make_submission_zip(tmp_path / "s.zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("notes.txt", "hi")
    report = verify_submission(path)
    assert "zip" in _failed(report)


def test_folder_prefix_is_refused(tmp_path):
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("submission/saved_model.pt", b"x")
    assert "zip" in _failed(verify_submission(path))


def test_corrupt_zip_and_non_zip(tmp_path):
    good = _artifact(tmp_path, Good()).read_bytes()
    (tmp_path / "corrupt.zip").write_bytes(good[: len(good) // 2])
    (tmp_path / "plain.zip").write_text("not a zip at all")
    for name in ("corrupt.zip", "plain.zip"):
        report = verify_submission(tmp_path / name)
        assert not report.passed and report.failures


def test_state_dict_instead_of_torchscript(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    path = tmp_path / "s.zip"
    path.write_bytes(zip_model(buf.getvalue()))
    assert "load" in _failed(verify_submission(path)) or "readable by torch 1.11" in _failed(verify_submission(path))


def test_cli_exit_codes_and_json(tmp_path):
    runner = CliRunner()
    good = _artifact(tmp_path, Good(), "good.zip")
    bad = _artifact(tmp_path, NaNOut(), "bad.zip")
    ok = runner.invoke(app, ["verify", str(good), "--json", "--report", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["passed"] is True
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    fail = runner.invoke(app, ["verify", str(bad)])
    assert fail.exit_code == 1
    assert "non-finite" in fail.output


class HalfGood(torch.nn.Module):
    """A float16 layer between float32 ends, like an `export.half` tower."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 64).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.float().mean(dim=(2, 3)) / 255.0
        return l2_normalize(self.linear(pooled.to(torch.float16)).float())


class MovesToWeights(torch.nn.Module):
    """Moves the host's images to its weights' device, like guie's exported forward."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.ones(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.offset.device)
        return l2_normalize(x.float().mean(dim=(2, 3)).repeat(1, 22)[:, :64] + self.offset)


def _saved_on_cuda(path):
    """Rewrite a CPU archive so its tensors say they were saved on cuda:0 (no GPU needed)."""
    with zipfile.ZipFile(path) as outer:
        archive = zipfile.ZipFile(io.BytesIO(outer.read("saved_model.pt")))
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    pkl = next(n for n in members if n.endswith("/data.pkl"))
    # BINUNICODE 'cpu' -> 'cuda:0': the memo refers to it by index, so the new length is fine
    members[pkl] = members[pkl].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as rewritten:
        for name, data in members.items():
            rewritten.writestr(name, data)
    path.write_bytes(zip_model(buf.getvalue()))
    return path


def _check(report, name):
    return next(c for c in report.checks if c.name == name)


def test_parity_with_the_eager_reference(tmp_path):
    path = _artifact(tmp_path, Good())
    same = verify_submission(path, reference=Good(), estimate_time=False)
    assert same.passed, same.failures
    assert _check(same, "parity with eager pipeline").values["max_abs_error"] == 0.0
    shifted = verify_submission(path, reference=lambda x: Good()(x).roll(1, dims=1), estimate_time=False)
    assert _failed(shifted) == {"parity with eager pipeline"}
    assert "re-export" in shifted.failures[0]


def test_half_artifact_verifies_on_cpu_with_a_cosine_tolerance(tmp_path):
    model = HalfGood()
    report = verify_submission(
        _artifact(tmp_path, model),
        reference=lambda x: l2_normalize(model.linear.float()(x.float().mean(dim=(2, 3)) / 255.0)),
    )
    assert report.passed, report.failures
    assert "float16 on cpu" in _check(report, "weights").detail
    assert "float16 artifact" in _check(report, "parity with eager pipeline").detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_artifact_is_mapped_to_the_cpu_and_its_timing_skipped(tmp_path):
    path = _saved_on_cuda(_artifact(tmp_path, MovesToWeights()))
    with pytest.raises(RuntimeError, match="NVIDIA|CUDA"):  # what the host's plain torch.jit.load does here
        with zipfile.ZipFile(path) as zf:
            torch.jit.load(io.BytesIO(zf.read("saved_model.pt")))
    report = verify_submission(path)
    assert report.passed, report.failures
    assert "on cuda:0" in _check(report, "weights").detail
    assert "map_location='cpu'" in _check(report, "load").detail
    timing = _check(report, "scorer time")
    assert timing.skipped and "no GPU" in timing.detail


def test_weights_on_a_second_gpu_fail(tmp_path):
    path = _saved_on_cuda(_artifact(tmp_path, MovesToWeights()))
    with zipfile.ZipFile(path) as zf:
        raw = zf.read("saved_model.pt")
    archive = zipfile.ZipFile(io.BytesIO(raw))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as rewritten:
        for info in archive.infolist():
            data = archive.read(info)
            rewritten.writestr(
                info.filename, data.replace(b"cuda:0", b"cuda:1") if info.filename.endswith("data.pkl") else data
            )
    path.write_bytes(zip_model(buf.getvalue()))
    report = verify_submission(path, estimate_time=False)
    assert "weights" in _failed(report)
    assert "cuda:1" in _check(report, "weights").detail


def test_scorer_time_is_information_that_never_fails():
    ok = VerifyReport("x")
    check_scorer_time(ok, 0.01, "the CPU (2 threads)", targets_cuda=False, half=False)
    timing = ok.checks[0]
    assert timing.passed and timing.info and not timing.skipped
    assert timing.values["estimated_hours"] == pytest.approx(0.01 * SCORER_IMAGES / 3600)
    over = VerifyReport("x")
    check_scorer_time(over, 1.0, "the CPU (2 threads)", targets_cuda=False, half=False)
    assert over.passed  # 57 h at this speed: advice, not a verdict
    assert "export.device: cuda" in over.checks[0].detail and "205,000 images" in over.checks[0].detail


def test_verdict_is_the_same_when_the_machine_is_100x_slower(tmp_path, monkeypatch):
    # a busy machine (another process on the 2 cores) slowed a 15 ms call to 400 ms
    path = _artifact(tmp_path, Good())
    idle = verify_submission(path)
    real, measured = verify.run_host_calls, []

    def busy(*args, **kwargs):
        calls = real(*args, **kwargs)
        measured.append(calls.seconds_per_image)
        calls.seconds_per_image *= 100
        return calls

    monkeypatch.setattr(verify, "run_host_calls", busy)
    slow = verify_submission(path)
    assert idle.passed and slow.passed
    assert [(c.name, c.passed) for c in slow.checks] == [(c.name, c.passed) for c in idle.checks]
    assert _check(slow, "scorer time").values["seconds_per_image"] == pytest.approx(100 * measured[0])


class NeverReturns(torch.nn.Module):
    """A forward that loops forever (a scripted loop ignores SIGALRM)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        while bool((y >= 0).all()):
            y = y + 1.0
        return l2_normalize(y.mean(dim=(2, 3)).repeat(1, 22)[:, :64])


def _host_call_children() -> list[int]:
    """This process's children running the host-call script (other test runs' are not ours)."""
    return host_call_children(os.getpid())


def test_a_forward_that_never_returns_is_killed_naming_the_call(tmp_path):
    report = verify_submission(_artifact(tmp_path, NeverReturns()), limits=VerifyLimits(call_timeout=2))
    (failure,) = report.failures
    assert failure.startswith("call 1x1: call 1x1 did not return within 2 s") and "--call-timeout" in failure
    assert _host_call_children() == []  # killed, not left running


def _zip_of(tmp_path, member_bytes, compression=zipfile.ZIP_DEFLATED):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("saved_model.pt", member_bytes)
    return path


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path):
    path = _zip_of(tmp_path, bytes(32 << 20))  # 32 MiB of zeros in a ~32 KB zip: the shape of a 2 GiB bomb
    assert path.stat().st_size < 100_000
    report = verify_submission(path)
    assert _failed(report) == {"zip"}
    assert "inflates" in report.failures[0] and "50x" in report.failures[0]


def test_a_model_over_the_size_cap_is_refused(tmp_path):
    report = verify_submission(_artifact(tmp_path, Good()), limits=VerifyLimits(max_model_bytes=1000))
    assert _failed(report) == {"zip"} and "above the" in report.failures[0]


def test_zip64_model_archive_is_refused_without_a_torch111_runtime(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Good()), buf)
    with zipfile.ZipFile(buf) as src:
        records = [
            (info.filename, src.read(info)) for info in src.infolist() if not info.filename.endswith(".debug_pkl")
        ]
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)  # what Python's zipfile does past 2 GiB, on a few KB
    rewritten = io.BytesIO()
    with zipfile.ZipFile(rewritten, "w") as dst:
        for name, data in records:
            dst.writestr(name, data)
    monkeypatch.undo()
    path = tmp_path / "submission.zip"
    path.write_bytes(zip_model(rewritten.getvalue()))
    report = verify_submission(path, estimate_time=False)
    assert "readable by torch 1.11" in _failed(report)
    assert "zip64 records" in _check(report, "readable by torch 1.11").detail


def test_a_directory_and_an_unknown_target_get_clear_messages(tmp_path):
    report = verify_submission(tmp_path)
    assert report.failures == [
        f"zip: {tmp_path} is a directory, not a zip -> pass the zip file itself, e.g. {tmp_path / 'submission.zip'}"
    ]
    with pytest.raises(GuieError, match="--target-torch 2.0: .* use --target-torch 1.11"):
        verify_submission(_artifact(tmp_path, Good()), target_torch="2.0")


def test_cli_refuses_bad_options_before_any_work(tmp_path):
    good = _artifact(tmp_path, Good())
    target = CliRunner().invoke(app, ["verify", str(good), "--target-torch", "2.0"])
    assert target.exit_code != 0 and isinstance(target.exception, GuieError)
    (tmp_path / "reports").mkdir()
    report = CliRunner().invoke(app, ["verify", str(good), "--report", str(tmp_path / "reports")])
    assert report.exit_code != 0 and isinstance(report.exception, GuieError)
    assert "--report" in str(report.exception) and "is a directory" in str(report.exception)


def test_cli_table_marks_skipped_checks_and_json_carries_values(tmp_path):
    runner = CliRunner()
    good = _artifact(tmp_path, Good(), "good.zip")
    result = runner.invoke(app, ["verify", str(good), "--json"])
    assert result.exit_code == 0, result.output
    timing = next(c for c in json.loads(result.output)["checks"] if c["name"] == "scorer time")
    assert timing["values"]["seconds_per_image"] > 0
    quick = runner.invoke(app, ["verify", str(good), "--json", "--no-estimate-time"])
    assert "scorer time" not in {c["name"] for c in json.loads(quick.output)["checks"]}


def test_two_calls_must_be_equal_on_a_cpu_and_equal_up_to_rounding_on_a_gpu():
    # a GPU re-optimises the scripted graph after the first calls, so the second call may round differently;
    # dropout left on (train mode) moves the embedding far more and fails on either
    from guie.stages.verify import repeat_problem

    out = torch.nn.functional.normalize(torch.randn(1, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    rounded = out + 1e-4 * torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    kept = torch.rand(1, 64, generator=torch.Generator().manual_seed(2)) > 0.1  # dropout p=0.1
    dropped = torch.nn.functional.normalize(out * kept, dim=1)
    assert repeat_problem(out, out.clone(), on_gpu=False) is None
    assert repeat_problem(out, rounded, on_gpu=False) == "differs between two identical calls"
    assert repeat_problem(out, rounded, on_gpu=True) is None
    assert "cosine" in repeat_problem(out, dropped, on_gpu=True)


def test_scorer_budget_counts_the_artifacts_flops_and_never_fails(tmp_path):
    # tiny_embedder: a 3072 -> 24 Linear tower and a 24 -> 16 head: 2 FLOPs per multiply-add
    from support import tiny_embedder

    report = verify_submission(_artifact(tmp_path, tiny_embedder()), estimate_time=False)
    budget = _check(report, "scorer budget")
    assert budget.passed and budget.info
    assert budget.values["flops_per_call"] == 2 * (3 * 32 * 32 * 24 + 24 * 16)
    assert "GFLOPs per call" in budget.detail and "reference" in budget.detail
