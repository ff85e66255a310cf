"""torchrun + DDP on CPU (gloo): two processes sharing each global batch train what one process
trains on that same global batch. The processes swap tower features, so BatchNorm and the loss
see the whole batch (no SyncBatchNorm, which gloo lacks); the remaining difference is float
summation order (per-process matmul blocking, the gradient all-reduce), far below the tolerance."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import tiny_params_dict, train_in, write_params

from guie.model.checkpoint import load_trained_embedder

# float reordering across 2 epochs of Adam, whose normalised step turns noise on a near-zero gradient into a
# visible difference (one finetune weight of 65,536 moved 2.6e-5 with the batched augmentations); a real
# mismatch (a wrong batch split, a missing all-reduce) is orders larger
TOLERANCE = dict(rtol=1e-4, atol=5e-5)


def _losses(metrics_dir: Path) -> list[float]:
    lines = (metrics_dir / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    return [float(line.split("\t")[-1]) for line in lines]


def _project_copy(layout, root: Path, params: dict) -> Path:
    for part in ("data/manifest", "models"):  # models/: the backbone weights and the trained stages
        shutil.copytree(layout.root / part, root / part)
    (root / "data" / "raw").symlink_to(layout.raw)
    return write_params(root / "params.yaml", params)


def _with_stage(params, name, **changes):
    """`params` with train.stages.<name> changed."""
    stages = dict(params.train.stages)
    stages[name] = dataclasses.replace(stages[name], **changes)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, stages=stages))


def _without_free_directions(state: dict) -> dict:
    """Drop the weights the loss is invariant to: their true gradient is exactly 0, so Adam turns
    float noise into lr-sized steps that differ between any two summation orders. They are the key
    bias of attention (softmax ignores a constant added to a query's logits), ln_post.bias (a
    constant shift of every feature, removed by the head's BatchNorm) and that BatchNorm's running
    mean, which tracks the shift."""
    out = {}
    for name, value in state.items():
        if name.endswith("attn.in_proj_bias"):
            width = value.numel() // 3
            value = torch.cat([value[:width], value[2 * width :]])  # query and value biases stay
        elif name in ("ln_post.bias", "0.running_mean"):
            continue
        out[name] = value
    return out


@pytest.mark.parametrize("stage", ["head", "finetune"])
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(stage, trained_project, tmp_path):
    params, layout = trained_project
    raw = tiny_params_dict()
    stages = raw["train"]["stages"]
    stages["head"]["epochs"] = stages["finetune"]["epochs"] = 2
    stages["head"]["cached_views"] = 0  # the tower runs sharded: the interesting case
    single_params = _with_stage(_with_stage(params, "head", epochs=2, cached_views=0), "finetune", epochs=2)
    single = tmp_path / "single.pt"
    train_in(single_params, layout, stage, out=single, metrics_dir=tmp_path / "m_single")

    raw["train"]["processes"] = 2  # `guie train` relaunches itself under torchrun
    root = tmp_path / "ddp"
    params_file = _project_copy(layout, root, raw)
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["guie", "train", stage, "--params", str(params_file), "--root", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x2 processes" in proc.stdout  # the summary, printed once, says how it ran
    assert proc.stdout.count(f"train {stage} done") == 1

    ddp_losses, single_losses = _losses(root / "metrics" / f"train_{stage}"), _losses(tmp_path / "m_single")
    assert len(ddp_losses) == len(single_losses) == 2
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(single_losses), **TOLERANCE)
    ddp_state = torch.load(root / "models" / f"{stage}.pt", weights_only=True)
    single_state = torch.load(single, weights_only=True)
    for part in ("tower", "head", "margin"):
        torch.testing.assert_close(
            _without_free_directions(ddp_state[part]), _without_free_directions(single_state[part]), **TOLERANCE
        )
    # and the trained models embed alike
    images = torch.randint(0, 256, (4, 3, 96, 130), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ddp_out = load_trained_embedder(params, root / "models" / f"{stage}.pt", layout.weights)(images)
        single_out = load_trained_embedder(params, single, layout.weights)(images)
    cosine = (ddp_out * single_out).sum(dim=1)  # both L2-normalised
    print("embedding cosine min", float(cosine.min()))
    assert float(cosine.min()) > 0.9999  # the free directions above move eval-mode outputs a little, not the model
    moved = (
        (
            single_state["head"]["2.weight"]
            - torch.load(layout.trained("head") if stage == "finetune" else single, weights_only=True)["head"][
                "2.weight"
            ]
        )
        .abs()
        .max()
    )
    assert stage == "head" or moved > 100 * TOLERANCE["atol"]  # training moved the weights far more than the tolerance
    assert not (root / "checkpoints" / f"train_{stage}" / "last.pt").exists()
