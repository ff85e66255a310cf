"""LegacyVisionTower computes open_clip's `visual(x)` and scripts to an archive torch 1.11 loads."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
from torch111 import outputs_in_torch111, torch111_or_skip

from guie.errors import GuieError
from guie.model.legacy_vit import LegacyVisionTower
from guie.torchscript_archive import archive_version, legacy_problems, strip_debug_info

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")

TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32}
TINY_TEXT = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}

# name -> (vision_cfg overrides, top-level overrides)
SUPPORTED = {
    "tok": ({}, {}),
    "layerscale": ({"ls_init_value": 0.1}, {}),
    "avg_final_ln_no_ln_pre": ({"pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True}, {}),
    "quick_gelu": ({}, {"quick_gelu": True}),
    "tanh_gelu": ({"act_kwargs": {"approximate": "tanh"}}, {}),
    "sincos_patch_dropout": ({"pos_embed_type": "sin_cos_2d", "patch_dropout": 0.5}, {}),
}
UNSUPPORTED = {
    "attentional_pool": ({"attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 4}, {}),
    "qk_norm": ({"qk_norm": True}, {}),
    "pool_type": ({"pool_type": "none"}, {}),
    "output_tokens": ({"output_tokens": True}, {}),
}


def _config_name(variant: str) -> str:
    return f"guie-test-vit-{variant}"


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for variant, (vision, top) in {**SUPPORTED, **UNSUPPORTED}.items():
        config = {"embed_dim": 32, "vision_cfg": {**TINY_VISION, **vision}, "text_cfg": TINY_TEXT, **top}
        (folder / f"{_config_name(variant)}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return folder


def tiny_visual(variant: str, seed: int = 0) -> torch.nn.Module:
    """The eval-mode image tower of a tiny open_clip model, every parameter randomised (open_clip
    initialises LayerNorms to 1/0 and LayerScale to a constant, which would hide mistakes)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(_config_name(variant), pretrained=None)
    with torch.no_grad():
        for parameter in model.visual.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model.visual.eval()


def _images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _archive(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("variant", sorted(SUPPORTED))
def test_tower_matches_open_clip_eager_and_scripted(variant: str) -> None:
    visual = tiny_visual(variant)
    tower = LegacyVisionTower(visual).eval()
    x = _images()
    with torch.no_grad():
        expected = visual(x)
        eager = tower(x)
        scripted = torch.jit.load(io.BytesIO(_archive(tower)))(x)  # through save/load, as exported
    assert expected.shape == (3, 32)
    torch.testing.assert_close(eager, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scripted, expected, atol=1e-5, rtol=1e-5)


def test_tower_shares_weights_with_open_clip() -> None:
    visual = tiny_visual("layerscale")
    tower = LegacyVisionTower(visual).eval()
    assert {id(p) for p in tower.parameters()} <= {id(p) for p in visual.parameters()}
    with torch.no_grad():  # a later weight update (training, load_state_dict) reaches the tower
        visual.transformer.resblocks[1].ls_2.gamma.mul_(-3.0)
        visual.proj.add_(0.5)
        torch.testing.assert_close(tower(_images()), visual(_images()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("option", sorted(UNSUPPORTED))
def test_unsupported_configs_name_the_option(option: str) -> None:
    with pytest.raises(GuieError, match=option):
        LegacyVisionTower(tiny_visual(option))


def test_scripted_tower_passes_the_torch111_static_check() -> None:
    archive = _archive(LegacyVisionTower(tiny_visual("layerscale")))
    assert archive_version(archive) <= 9
    assert legacy_problems(archive, "1.11") == []


EXPORT_SCRIPT = textwrap.dedent(
    """
    import hashlib, io, sys, warnings
    import open_clip, torch
    warnings.simplefilter("ignore")
    from guie.model.legacy_vit import LegacyVisionTower
    from guie.torchscript_archive import strip_debug_info

    def digest(module):
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(module), buffer)
        return hashlib.sha256(strip_debug_info(buffer.getvalue())).hexdigest()

    open_clip.add_model_config(sys.argv[1])
    torch.manual_seed(0)
    visual = open_clip.create_model(sys.argv[2], pretrained=None).visual.eval()
    print(digest(LegacyVisionTower(visual)), digest(torch.nn.Linear(3, 2)))
    """
)


def test_tower_archive_bytes_do_not_depend_on_the_hash_seed(tiny_configs: Path) -> None:
    # torch.jit orders a module's Final constants through a Python set; nn.Linear has two, so
    # its bytes change with PYTHONHASHSEED. The tower declares none, so its bytes must not.
    runs = [  # these two seeds order {"in_features", "out_features"} differently; run side by side
        subprocess.Popen(
            [sys.executable, "-c", EXPORT_SCRIPT, str(tiny_configs), _config_name("layerscale")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2")
    ]
    digests = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        digests.append(out.split())
    (tower_1, linear_1), (tower_2, linear_2) = digests
    assert linear_1 != linear_2, "control failed: pick two PYTHONHASHSEED values that reorder nn.Linear's constants"
    assert tower_1 == tower_2


def test_scripted_tower_runs_in_torch111_like_torch214(tmp_path: Path) -> None:
    python = torch111_or_skip()
    tower = LegacyVisionTower(tiny_visual("layerscale")).eval()
    x = _images()
    with torch.no_grad():
        expected = tower(x)
    theirs = outputs_in_torch111(python, strip_debug_info(_archive(tower)), x, tmp_path)
    torch.testing.assert_close(theirs, expected, atol=1e-5, rtol=1e-5)
