"""The scorer budget: FLOPs counted on the artifact equal a naive count of its layers, and the hours
scale the reported reference run; it informs and never gates."""

import open_clip
import pytest
import torch
from support import tiny_embedder

from guie.contract import SCORER_LIMIT_S
from guie.data.transforms import EvalPreprocess
from guie.model.backbone import register_model_configs, set_input_geometry
from guie.model.embedder import Embedder
from guie.model.legacy_vit import LegacyVisionTower
from guie.scorer_budget import REFERENCE_FLOPS, REFERENCE_SECONDS, budget_for, count_flops, vit_flops


def test_count_on_a_scripted_model_equals_its_matmuls():
    # tiny_embedder: Linear 3072 -> 24 tower, head BatchNorm + Dropout + Linear 24 -> 16 (no bias FLOPs)
    model = torch.jit.script(tiny_embedder())
    assert count_flops(model) == 2 * (3 * 32 * 32 * 24 + 24 * 16)


@pytest.mark.parametrize(("side", "stride"), [(224, 0), (160, 24)])
def test_count_on_a_scripted_legacy_vit_equals_the_vit_formula(side, stride):
    # guie-tiny-vit: width 128, 4 blocks, MLP ratio 4, 32 px patches, projection 128 -> 128
    register_model_configs()
    torch.manual_seed(0)
    visual = open_clip.create_model("guie-tiny-vit").visual
    set_input_geometry(visual, "guie-tiny-vit", side, stride)
    grid = (side - 32) // (stride or 32) + 1
    pre = EvalPreprocess(side, "squash", (0.5,) * 3, (0.5,) * 3)
    model = torch.jit.script(Embedder(pre, LegacyVisionTower(visual), None, None).eval())
    expected = vit_flops(128, 4, 4.0, grid * grid + 1, grid * grid, 3 * 32 * 32) + 2 * 128 * 128
    assert count_flops(model) == expected


def test_budget_scales_the_reference_and_warns_without_failing_above_the_limit():
    at_reference = budget_for(REFERENCE_FLOPS)
    assert at_reference.estimated_hours == pytest.approx(REFERENCE_SECONDS / 3600) and not at_reference.over_limit
    # 1st place's ViT-H-14 at 290 px, stride 12: a 24x24 grid, 577 tokens
    first_place = budget_for(vit_flops(1280, 32, 4.0, 577, 576, 3 * 14 * 14) + 2 * 1280 * 1024)
    assert first_place.flops_per_call / REFERENCE_FLOPS == pytest.approx(2.33, abs=0.01)
    assert first_place.over_limit and first_place.estimated_hours * 3600 > SCORER_LIMIT_S
    assert "above the limit by this estimate" in first_place.describe() and "was scored" in first_place.describe()
    recorded = first_place.as_dict()
    assert (
        recorded["counts"].startswith("FLOPs (2 per multiply-add)") and recorded["reference_flops"] == REFERENCE_FLOPS
    )


@pytest.mark.slow
def test_the_reference_is_what_the_counter_finds_in_a_scripted_vit_h_14_at_224():
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-H-14").visual
    pre = EvalPreprocess(224, "squash", (0.5,) * 3, (0.5,) * 3)
    model = torch.jit.script(Embedder(pre, LegacyVisionTower(visual), None, None).eval())
    assert count_flops(model) == REFERENCE_FLOPS
