import dataclasses
import json
import zipfile

import pytest
import torch

from guie.contract import CONVERTED_MIN_COSINE, load_artifact
from guie.errors import GuieError
from guie.params.export import ExportParams
from guie.scorer_budget import budget_for, count_flops
from guie.stages.export import (
    build_eager,
    build_models,
    deployable,
    export_submission,
    legacy_twin,
    min_cosine,
    parity_error,
    script,
    scripted_bytes,
    zip_model,
)
from guie.stages.verify import verify_submission


def _with_export(params, **export):
    return dataclasses.replace(params, export=ExportParams(**export))


def test_export_writes_a_verified_deterministic_zip(trained_project, tmp_path):
    params, layout = trained_project
    a, b = tmp_path / "a" / "submission.zip", tmp_path / "b" / "submission.zip"
    info = export_submission(
        params, layout.trained("finetune"), layout.weights, layout.pca, a, tmp_path / "a" / "export.json"
    )
    export_submission(params, layout.trained("finetune"), layout.weights, layout.pca, b, tmp_path / "b" / "export.json")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        assert zf.namelist() == ["saved_model.pt"]
        assert zf.infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)
        assert not any(n.endswith(".debug_pkl") for n in zipfile.ZipFile(zf.open("saved_model.pt")).namelist())
    recorded = json.loads((tmp_path / "a" / "export.json").read_text())
    assert recorded == info and recorded["archive_format_version"] <= 9 and recorded["size"] == a.stat().st_size
    # what the issue asks export.json to record
    assert recorded["torch"] == torch.__version__.split("+")[0] and recorded["open_clip"]
    assert len(recorded["params_hash"]) == 16 and len(recorded["sha256"]) == 64
    assert (recorded["device"], recorded["half"], recorded["target_torch"]) == ("cpu", False, "1.11")
    # the classes whose code the archive holds: moving one changes the zip's bytes, and this says why
    assert {"guie.model.deploy.OnWeightsDevice", "guie.model.embedder.Embedder"} <= set(recorded["scripted_classes"])
    # the scorer budget: the artifact's FLOPs per host call, as `guie verify` counts them
    assert recorded["scorer_budget"] == budget_for(count_flops(load_artifact(a))).as_dict()
    assert 0 < recorded["scorer_budget"]["estimated_hours"] < 0.1  # a tiny ViT
    with zipfile.ZipFile(a) as zf, zipfile.ZipFile(zf.open("saved_model.pt")) as archive:
        code = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".py"))
    assert all(name.encode() in code for name in ("guie.model.deploy", "guie.model.embedder"))
    report = verify_submission(a)
    assert report.passed, report.failures


def test_scripted_model_equals_eager_pipeline(trained_project):
    params, layout = trained_project
    eager, scripted = build_models(params, layout.trained("finetune"), layout.weights, layout.pca)
    assert parity_error(eager, scripted, seed=5) <= 1e-5
    x = torch.randint(0, 256, (3, 3, 200, 100), dtype=torch.uint8)  # a same-size batch
    with torch.no_grad():
        out = scripted(x)
    assert out.shape == (3, 64) and out.dtype == torch.float32


def test_half_precision_needs_cuda(trained_project, tmp_path):
    params, layout = trained_project
    with pytest.raises(GuieError, match="export.half: true needs export.device: cuda"):
        export_submission(
            _with_export(params, device="cpu", half=True),
            layout.trained("finetune"),
            layout.weights,
            layout.pca,
            tmp_path / "s.zip",
            tmp_path / "e.json",
        )
    assert not (tmp_path / "s.zip").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_export_without_a_gpu_says_so(trained_project, tmp_path):
    params, layout = trained_project
    with pytest.raises(GuieError, match="export.device: cuda needs a GPU"):
        export_submission(
            _with_export(params, device="cuda"),
            layout.trained("finetune"),
            layout.weights,
            layout.pca,
            tmp_path / "s.zip",
            tmp_path / "e.json",
        )


def test_float16_tower_on_a_copy_stays_close_and_verifies_on_cpu(trained_project, tmp_path):
    # torch 2.x has float16 CPU kernels, so the half path runs here; the scorer runs it on CUDA
    params, layout = trained_project
    eager = build_eager(params, layout.trained("finetune"), layout.weights, layout.pca)
    half = script(deployable(legacy_twin(eager), "cpu", half=True))
    assert all(p.dtype == torch.float32 for p in eager.parameters())  # converted on a copy
    assert min_cosine(eager, half, params.seed) >= CONVERTED_MIN_COSINE
    path = tmp_path / "submission.zip"
    path.write_bytes(zip_model(scripted_bytes(half)))
    report = verify_submission(path, reference=eager, estimate_time=False)
    assert report.passed, report.failures
    assert "float16 on cpu" in next(c.detail for c in report.checks if c.name == "weights")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("half", [False, True])
def test_cuda_export_verifies_and_takes_huge_cpu_images(trained_project, tmp_path, half):
    params, layout = trained_project
    params = _with_export(params, device="cuda", half=half)
    path = tmp_path / "submission.zip"
    info = export_submission(
        params, layout.trained("finetune"), layout.weights, layout.pca, path, tmp_path / "export.json"
    )
    assert info["device"] == "cuda" and info["deployed_min_cosine"] >= CONVERTED_MIN_COSINE
    eager = build_eager(params, layout.trained("finetune"), layout.weights, layout.pca)
    report = verify_submission(path, reference=eager)
    assert report.passed, report.failures
    with zipfile.ZipFile(path) as zf:
        model = torch.jit.load(zf.open("saved_model.pt"))  # as the host loads it: onto the GPU
    with torch.no_grad():
        out = model(torch.randint(0, 256, (1, 3, 12000, 9000), dtype=torch.uint8))  # a huge CPU image
    assert out.shape == (1, 64) and out.device.type == "cuda"


class EightTensors(torch.nn.Module):
    """16 MiB of weights in 2 MiB tensors: an archive much larger than any one record."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.full((512, 1024), float(i))) for i in range(8)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for w in self.weights:
            out = out + w.sum()
        return out


def test_saving_the_archive_holds_one_record_at_a_time_not_the_archive(tmp_path):
    import tracemalloc

    from guie.stages.export import save_archive

    module = script(EightTensors())
    tracemalloc.start()
    try:
        save_archive(module, tmp_path / "saved_model.pt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = (tmp_path / "saved_model.pt").stat().st_size
    assert size > 16 << 20
    # Python-side buffers while rewriting: a record or two (2 MiB each), not the 16 MiB archive
    assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB of Python buffers for a {size / 2**20:.1f} MiB archive"


def test_export_refuses_weights_over_4_gib_naming_export_half():
    from guie.stages.export import _check_size

    huge = torch.nn.Linear(1, 1).to("meta")
    huge.weight = torch.nn.Parameter(torch.empty(2**30 + 1, device="meta"))  # 4 GiB + 4 bytes, never allocated
    with pytest.raises(GuieError, match="reads TorchScript archives up to 4 GiB; set export.half: true"):
        _check_size(huge, half=False)
    with pytest.raises(GuieError, match="use a smaller model"):
        _check_size(huge, half=True)


def test_scripted_classes_names_a_class_scripted_twice_in_one_process_by_its_own_name():
    # two instances of one class with different attribute types compile to two TorchScript types, the second
    # mangled ("___torch_mangle_N"); export.json must record the class's name, not the process's history
    from guie.stages.export import scripted_classes

    first = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3)))
    second = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))
    names = first._c._type().qualified_name() + second._c._type().qualified_name()
    assert "___torch_mangle" in names
    assert scripted_classes(second) == [
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.linear.Linear",
    ]
