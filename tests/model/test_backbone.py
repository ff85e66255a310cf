import pytest
import torch

from guie.config import ModelParams
from guie.errors import GuieError
from guie.model.backbone import load_tower, materialise_weights, tower_dim, unfreeze_from


def test_random_init_is_seeded_and_loads_through_the_checkpoint_path(tmp_path):
    params = ModelParams()
    materialise_weights(params, 7, tmp_path / "a.pt")
    materialise_weights(params, 7, tmp_path / "b.pt")
    materialise_weights(params, 8, tmp_path / "c.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "c.pt").read_bytes()
    tower = load_tower(params.name, tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(tower.conv1.weight, state["visual.conv1.weight"])
    assert tower_dim(tower) == 128
    assert not hasattr(tower, "transformer_text")


def test_unknown_model_and_tag_are_named(tmp_path):
    with pytest.raises(GuieError, match="model.name"):
        materialise_weights(ModelParams(name="ViT-Nope"), 0, tmp_path / "w.pt")
    with pytest.raises(GuieError, match="model.pretrained"):
        materialise_weights(ModelParams(pretrained="no_such_tag"), 0, tmp_path / "w.pt")


def test_missing_weights_name_the_stage(tmp_path):
    with pytest.raises(GuieError, match="run `dvc repro weights`"):
        load_tower("guie-tiny-vit", tmp_path / "none.pt")


def test_unfreeze_from_trains_only_the_late_blocks(tmp_path):
    materialise_weights(ModelParams(), 0, tmp_path / "w.pt")
    tower = load_tower("guie-tiny-vit", tmp_path / "w.pt")
    trainable = unfreeze_from(tower, 2)
    names = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert names and len(trainable) == len(names)
    assert all(n.startswith(("transformer.resblocks.2.", "transformer.resblocks.3.", "ln_post.", "proj")) for n in names)
    assert any(n.startswith("transformer.resblocks.2.") for n in names)
    with pytest.raises(GuieError, match="unfreeze_from"):
        unfreeze_from(tower, 9)
