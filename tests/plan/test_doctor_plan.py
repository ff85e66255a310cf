"""`guie doctor`'s plan line: the plan's totals for the GPUs here (or the CPU), its disk against the free space."""

from __future__ import annotations

from support import REPO

from guie.doctor import Gpu, diagnose
from guie.layout import Layout
from guie.params.load import load_params
from guie.plan.machines import preset_for


def _plan(findings):
    [plan] = [f for f in findings if f.item == "plan"]
    return plan


def test_the_embedded_default_is_planned_on_this_cpu(tmp_path, fixed_measurements):
    params = load_params(REPO / "params.yaml")
    assert not [f for f in diagnose(params, Layout(tmp_path), gpus=list, free_gib=100) if f.item == "plan"]
    plan = _plan(diagnose(params, Layout(tmp_path), gpus=list, free_gib=100, plan=True))
    assert plan.status == "ok" and plan.detail.startswith("`guie plan --gpu cpu --gpus 1` on this CPU: total: ")


def test_the_full_recipe_is_planned_on_the_gpus_here_and_needs_their_disk(tmp_path, fixed_measurements):
    params = load_params(REPO / "params" / "full-recipe.yaml")
    gpus = [Gpu("NVIDIA H100 80GB HBM3", 79.1)] * 8
    plan = _plan(diagnose(params, Layout(tmp_path), gpus=lambda: gpus, hub_client="hf", free_gib=100, plan=True))
    assert plan.detail.startswith("`guie plan --gpu h100 --gpus 8` on the 8 h100 here: total: ")
    assert plan.status == "missing" and "the plan needs ~" in plan.fix and "100 GiB are free" in plan.fix
    roomy = _plan(diagnose(params, Layout(tmp_path), gpus=list, hub_client="hf", free_gib=10_000, plan=True))
    assert roomy.status == "ok" and "on one h100 (no GPU of a known kind here)" in roomy.detail


def test_gpu_names_map_to_presets():
    assert preset_for("NVIDIA H100 80GB HBM3", 79.1) == "h100"
    assert preset_for("NVIDIA H200", 139.8) == "h200"
    assert preset_for("NVIDIA A100-SXM4-40GB", 39.4) == "a100-40gb"
    assert preset_for("NVIDIA A100-SXM4-80GB", 79.1) == "a100-80gb"
    assert preset_for("NVIDIA L4", 22.0) == "l4" and preset_for("Tesla T4", 14.6) == "t4"
    assert preset_for("NVIDIA GeForce RTX 4090", 24.0) is None and preset_for("NVIDIA L40S", 44.4) is None
