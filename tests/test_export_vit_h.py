"""The full recipe's artifact reaches the scorer: a random-init ViT-H-14 + head + PCA, exported in
float32 through guie's own path (legacy twin -> script -> torch's archive writer), is over 2 GiB,
passes `guie verify` and loads and runs in a real torch 1.11 like in this torch.

Slow (about 5-10 min and ~10 GiB of memory on 2 cores): `pytest -m slow tests/test_export_vit_h.py`.
"""

from __future__ import annotations

import resource
import time
import zipfile

import open_clip
import pytest
import torch
from torch111 import run_torch111, torch111_or_skip

from guie.data.transforms import build_eval_preprocess
from guie.model.backbone import tower_mean_std
from guie.model.embedder import Embedder, Projection
from guie.model.head import build_head
from guie.params.preprocess import PreprocessParams
from guie.stages.export import legacy_twin, parity_error, script, write_artifact
from guie.stages.verify import host_inputs, verify_submission

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")]

# In torch 1.11: the final embeddings and the tower's pooled features for the same images.
TOWER_IN_TORCH111 = """
import sys, torch
model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
images = torch.load(sys.argv[2])
with torch.no_grad():
    out = {name: (model(x), model.tower(model.preprocess(x))) for name, x in images.items()}
torch.save(out, sys.argv[3])
"""


def _peak_rss_gib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # Linux reports KiB; RUSAGE_CHILDREN: the largest child


def _vit_h_embedder() -> Embedder:
    torch.manual_seed(0)
    tower = open_clip.create_model("ViT-H-14", pretrained=None).visual.eval()
    head = build_head(int(tower.output_dim), 256, 0.2).eval()
    with torch.no_grad():  # a BatchNorm with non-trivial statistics, as after training
        head[0].running_mean.normal_(0, 0.1)
        head[0].running_var.uniform_(0.5, 2.0)
    components = torch.linalg.qr(torch.randn(256, 64))[0].T.contiguous()
    projection = Projection(torch.randn(256) * 0.01, components, torch.ones(64))
    preprocess = build_eval_preprocess(PreprocessParams(), *tower_mean_std(tower))
    return Embedder(preprocess, tower, head, projection).eval()


def test_vit_h_float32_artifact_over_2_gib_loads_and_runs_in_torch111(tmp_path):
    python = torch111_or_skip()
    eager = _vit_h_embedder()
    start = time.perf_counter()
    artifact = script(legacy_twin(eager))
    info = write_artifact(artifact, tmp_path / "submission.zip")
    export_s = time.perf_counter() - start
    print(
        f"\nViT-H-14 float32: archive {info['model_size'] / 2**30:.2f} GiB, zip {info['size'] / 2**30:.2f} GiB, "
        f"export {export_s:.0f} s, peak RSS {_peak_rss_gib():.1f} GiB"
    )
    assert info["model_size"] > 2**31 and info["archive_format_version"] <= 9
    with zipfile.ZipFile(tmp_path / "submission.zip") as zf:
        assert zf.namelist() == ["saved_model.pt"]

    assert parity_error(eager, artifact, seed=0) <= 1e-5  # what export checks before writing
    report = verify_submission(tmp_path / "submission.zip", runtime=python, reference=eager, estimate_time=False)
    assert report.passed, report.failures

    images = {name: x for name, x in host_inputs().items() if name in ("512x512", "37x2000", "cmyk jpeg")}
    torch.save(images, tmp_path / "images.pt")
    with zipfile.ZipFile(tmp_path / "submission.zip") as zf:
        zf.extract("saved_model.pt", tmp_path)
    run_torch111(
        python,
        TOWER_IN_TORCH111,
        str(tmp_path / "saved_model.pt"),
        str(tmp_path / "images.pt"),
        str(tmp_path / "out.pt"),
        timeout=1800,
    )
    theirs = torch.load(tmp_path / "out.pt")
    worst_embedding = worst_pooled = 0.0
    with torch.no_grad():
        for name, x in images.items():
            embedding, pooled = theirs[name]
            ours_pooled = eager.tower(eager.preprocess(x))
            worst_embedding = max(worst_embedding, float((embedding - eager(x)).abs().max()))
            worst_pooled = max(
                worst_pooled, float(((pooled - ours_pooled).norm(dim=-1) / ours_pooled.norm(dim=-1)).max())
            )
    print(
        f"max |1.11 - {torch.__version__}|: embeddings {worst_embedding:.2e}, "
        f"pooled features (relative) {worst_pooled:.2e}; "
        f"peak RSS {_peak_rss_gib():.1f} GiB here, "
        f"{_peak_rss_gib(resource.RUSAGE_CHILDREN):.1f} GiB in the largest child (verify, torch 1.11)"
    )
    assert worst_embedding <= 1e-5 and worst_pooled <= 1e-5
