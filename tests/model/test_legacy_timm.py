"""LegacyTimmTower computes open_clip's timm-backed tower (SigLIP's kind) and scripts to an archive
torch 1.11 loads; towers it cannot express are refused before any weights are fetched, naming the part."""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.timm_model import TimmModel
from timm.layers.activations import GELUTanh
from timm.models.vision_transformer import VisionTransformer
from torch111 import outputs_in_torch111, torch111_or_skip

from guie.errors import GuieError
from guie.model.backbone import register_model_configs, set_input_geometry
from guie.model.legacy import check_exportable, legacy_tower
from guie.model.legacy_timm import LegacyTimmTower
from guie.params.model import ModelParams
from guie.stages.weights import materialise_weights
from guie.torchscript_archive import archive_version, legacy_problems, strip_debug_info

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")

TINY = {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2}
# name -> (timm VisionTransformer options, open_clip timm_proj)
VARIANTS = {
    "siglip_map": ({"class_token": False, "global_pool": "map"}, "none"),
    "cls_token_linear_proj": ({"global_pool": "token"}, "linear"),
    "cls_no_embed_class_avg": ({"global_pool": "avg", "no_embed_class": True, "fc_norm": True}, "none"),
    "layerscale_tanh_gelu": (
        {"class_token": False, "global_pool": "map", "init_values": 0.1, "act_layer": GELUTanh},
        "none",
    ),
}


def tiny_timm_tower(variant: str, seed: int = 0) -> TimmModel:
    """open_clip's TimmModel around a tiny timm ViT, every parameter randomised (timm initialises norms
    to 1/0 and the latent query small, which would hide mistakes)."""
    options, proj = VARIANTS[variant]
    register_model_configs()
    torch.manual_seed(seed)
    tower = TimmModel("guie_tiny_siglip", 24, image_size=64, pool="map", proj="none")  # its trunk is replaced
    tower.trunk = VisionTransformer(**TINY, **options, num_classes=0)
    if proj == "linear":  # open_clip's layout for timm_proj 'linear'
        layers = OrderedDict(drop=torch.nn.Dropout(0.0), proj=torch.nn.Linear(32, 24, bias=False))
        tower.head = torch.nn.Sequential(layers)
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return tower.eval()


def _images(side: int = 64, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def _archive(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tower_matches_timm_eager_and_scripted(variant):
    tower = tiny_timm_tower(variant)
    legacy = legacy_tower(tower).eval()
    assert isinstance(legacy, LegacyTimmTower)
    x = _images()
    with torch.no_grad():
        expected = tower(x)
        scripted = torch.jit.load(io.BytesIO(_archive(legacy)))(x)
    assert expected.shape == (3, 24 if VARIANTS[variant][1] == "linear" else 32)
    torch.testing.assert_close(legacy(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scripted, expected, atol=1e-5, rtol=1e-5)


def test_tower_shares_weights_with_timm():
    tower = tiny_timm_tower("siglip_map")
    legacy = legacy_tower(tower).eval()
    assert {id(p) for p in legacy.parameters()} <= {id(p) for p in tower.parameters()}
    with torch.no_grad():  # a later weight update (training, load_state_dict) reaches the rewrite
        tower.trunk.attn_pool.latent.mul_(-2.0)
        torch.testing.assert_close(legacy(_images()), tower(_images()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("side", "stride", "grid"), [(96, 0, 6), (64, 12, 5)])
def test_any_resolution_and_overlapping_patches(side, stride, grid):
    tower = tiny_timm_tower("siglip_map")
    set_input_geometry(tower, "tiny", side, stride)
    assert tower.trunk.pos_embed.shape == (1, grid * grid, 32)
    assert tower.trunk.patch_embed.proj.stride == (stride or 16,) * 2
    x = _images(side)
    with torch.no_grad():
        torch.testing.assert_close(legacy_tower(tower)(x), tower(x), atol=1e-5, rtol=1e-5)


def test_scripted_tower_passes_the_torch111_static_check_and_runs_there(tmp_path: Path):
    legacy = legacy_tower(tiny_timm_tower("layerscale_tanh_gelu")).eval()
    archive = strip_debug_info(_archive(legacy))
    (tmp_path / "tower.pt").write_bytes(archive)
    assert archive_version(tmp_path / "tower.pt") <= 9 and legacy_problems(tmp_path / "tower.pt", "1.11") == []
    python = torch111_or_skip()
    x = _images()
    with torch.no_grad():
        expected = legacy(x)
    torch.testing.assert_close(outputs_in_torch111(python, archive, x, tmp_path), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("EVA02-L-14", "Eva (EVA: rotary position embeddings, SwiGLU MLPs)"),
        ("EVA02-B-16", "Eva"),
        ("RN50", "ModifiedResNet"),
        ("coca_ViT-B-32", "attentional_pool"),
    ],
)
def test_towers_the_export_cannot_express_are_refused_naming_the_part(name, part):
    with pytest.raises(GuieError, match=f"model.name {name}: .*{re.escape(part)}"):
        check_exportable(name)


@pytest.mark.parametrize("name", ["ViT-SO400M-14-SigLIP", "ViT-SO400M-14-SigLIP-384", "ViT-B-16-SigLIP", "ViT-H-14"])
def test_the_top_recipes_towers_are_accepted_without_building_them(name):
    check_exportable(name)  # on the meta device: no memory, no init


def test_the_weights_stage_refuses_eva02_before_fetching_anything(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("create_model was called: the refusal must come first")

    monkeypatch.setattr(open_clip, "create_model", no_network)
    params = ModelParams(name="EVA02-L-14", pretrained="merged2b_s4b_b131k")
    with pytest.raises(GuieError, match="model.name EVA02-L-14: .*Eva"):
        materialise_weights(params, 0, tmp_path / "backbone.pt")
    assert not (tmp_path / "backbone.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "side"), [("ViT-SO400M-14-SigLIP", 224), ("ViT-SO400M-14-SigLIP-384", 384)])
def test_siglip_so400m_at_its_real_size_scripts_for_torch111_and_matches_timm(name, side, tmp_path):
    # the frozen SigLIP-SO400M of the 0.722 linear-probe result, random init (no weights here)
    torch.manual_seed(0)
    tower = open_clip.create_model(name).visual.eval()
    legacy = legacy_tower(tower).eval()
    x = _images(side, batch=1)
    with torch.no_grad():
        expected = tower(x)
        ours = legacy(x)
    assert expected.shape == (1, 1152)
    assert float((ours - expected).abs().max() / expected.norm()) <= 1e-5
    archive = strip_debug_info(_archive(legacy))
    (tmp_path / "tower.pt").write_bytes(archive)
    assert archive_version(tmp_path / "tower.pt") <= 9 and legacy_problems(tmp_path / "tower.pt", "1.11") == []
    python = torch111_or_skip()
    theirs = outputs_in_torch111(python, archive, x, tmp_path)
    assert float((theirs - ours).abs().max() / ours.norm()) <= 1e-5
