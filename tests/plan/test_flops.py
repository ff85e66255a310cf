"""The towers' costs, counted by torch on the meta device, against open_clip's published profile."""

from __future__ import annotations

import pytest

from guie.plan.flops import activation_bytes, tower_cost

# open_clip's model profile (docs/model_profile.csv) gives image GFLOPs as multiply-adds: ViT-B-32 4.41,
# ViT-H-14 167.3 (334.6 GFLOPs at 2 per multiply-add, the scorer budget's reference), ViT-L-14-336 191.1
PUBLISHED = [("ViT-B-32", 224, 2 * 4.41e9), ("ViT-H-14", 224, 334.6e9), ("ViT-L-14-336", 336, 2 * 191.1e9)]


@pytest.mark.parametrize(("name", "size", "flops"), PUBLISHED)
def test_forward_flops_match_open_clips_profile(name, size, flops):
    assert tower_cost(name, size).forward_flops == pytest.approx(flops, rel=0.01)


def test_vit_h_parts_add_up_and_the_trained_part_is_the_top_blocks():
    cost = tower_cost("ViT-H-14", 224)
    assert cost.depth == 32 and cost.dim == 1024 and (cost.tokens, cost.width) == (257, 1280)
    assert cost.params == pytest.approx(632e6, rel=0.01)  # the 632M image tower
    assert sum(cost.block_params[15:]) + cost.after_params == pytest.approx(335e6, rel=0.01)  # blocks 15..31
    assert sum(cost.block_flops) + cost.after_flops < cost.forward_flops  # the patch embedding is the rest
    # blocks 15..31: 17 of 32 equal blocks, and what follows them; everything with tower: all
    assert cost.trained_forward_flops(15) == pytest.approx(sum(cost.block_flops[15:]) + cost.after_flops)
    assert cost.trained_forward_flops(15) == pytest.approx(cost.forward_flops * 17 / 32, rel=0.01)
    assert cost.trained_forward_flops(0) == cost.forward_flops
    assert cost.trained_params(0) == cost.params


def test_stride_and_size_change_the_count_as_the_token_grid_does():
    at_224, at_290 = tower_cost("ViT-H-14", 224), tower_cost("ViT-H-14", 290, 12)
    assert at_290.tokens == 24 * 24 + 1
    # the scorer budget's count of the 1st place's geometry: 2.33x the reference
    assert at_290.forward_flops / at_224.forward_flops == pytest.approx(2.33, abs=0.01)


def test_activations_grow_with_what_trains():
    none = activation_bytes("ViT-B-32", 224, 0, None)
    top = activation_bytes("ViT-B-32", 224, 0, 6)
    everything = activation_bytes("ViT-B-32", 224, 0, 0)
    assert none == 0 < top < everything
    assert top == pytest.approx(everything / 2, rel=0.1)  # 6 of 12 equal blocks
