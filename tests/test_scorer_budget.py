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


# ---- the README's scorer hours are this module's ---------------------------------------------------

_README_TOWER = {
    "ViT-H-14": "ViT-H-14",
    "ViT-L-14-336": "ViT-L-14-336",
    "ViT-SO400M-14-SigLIP-384": "SO400M-SigLIP-384",
}


def _readme_table(first_column: str) -> list[dict[str, str]]:
    """The README table whose header starts with `| first_column |`, as one dict per row."""
    from support import REPO

    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=False)))
    return rows


def _final_geometry(params) -> tuple[int, int]:
    """The final stage's image size and patch stride: each stage's own, else its input stage's."""
    geometry = {"backbone": (params.preprocess.image_size, params.model.patch_stride)}
    for name, stage in params.train.stages.items():
        size, stride = geometry[stage.from_]
        geometry[name] = (stage.image_size or size, stride if stage.patch_stride is None else stage.patch_stride)
    return geometry[params.train.final]


def test_the_readmes_real_tower_hours_are_the_budget_of_their_flops():
    rows = [r for r in _readme_table("tower") if r["budget h"]]
    assert len(rows) >= 7
    for row in rows:
        hours = budget_for(float(row["GFLOPs/call"]) * 1e9).estimated_hours
        assert row["budget h"] == f"{hours:.1f}", row["tower"]


def test_the_readmes_recipe_hours_are_the_budget_of_each_presets_final_tower_and_tta():
    """Recipes' "est. scorer h" = budget_for(the real-towers row of the preset's final geometry, x2 with flip TTA)."""
    from support import REPO

    from guie.params.load import load_params

    flops = {r["tower"]: float(r["GFLOPs/call"]) * 1e9 for r in _readme_table("tower") if r["budget h"]}
    recipes = _readme_table("preset")
    assert len(recipes) == 5
    for row in recipes:
        name = row["preset"].split("`")[1]
        params = load_params(REPO / "params" / "recipes" / name)
        size, stride = _final_geometry(params)
        tower = f"{_README_TOWER[params.model.name]} @{size}" + (f" stride {stride}" if stride else "")
        calls = 2 if params.export.tta == "flip" else 1
        assert row["est. scorer h"] == f"{budget_for(calls * flops[tower]).estimated_hours:.1f}", name
