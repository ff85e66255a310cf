import os
import subprocess
import sys

import open_clip
import pytest
import torch
from support import tiny_params_dict, write_params

from guie.errors import GuieError
from guie.model.backbone import load_tower, tower_dim, tower_layers
from guie.params.model import ModelParams
from guie.stages.weights import materialise_weights


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


def test_tower_layers_partition_the_tower_by_depth(tmp_path):
    materialise_weights(ModelParams(), 0, tmp_path / "w.pt")
    tower = load_tower("guie-tiny-vit", tmp_path / "w.pt")
    before, blocks, after = tower_layers(tower)
    names = {id(p): n for n, p in tower.named_parameters()}
    assert sorted(id(p) for p in [*before, *(p for b in blocks for p in b), *after]) == sorted(names)
    assert len(blocks) == 4 and all(names[id(p)].startswith("transformer.resblocks.2.") for p in blocks[2])
    assert {names[id(p)] for p in after} == {"ln_post.weight", "ln_post.bias", "proj"}
    assert "conv1.weight" in {names[id(p)] for p in before} and "positional_embedding" in {names[id(p)] for p in before}


def test_a_local_checkpoint_path_is_a_pretrained_source(tmp_path):
    materialise_weights(ModelParams(), 3, tmp_path / "mine.pt")
    materialise_weights(ModelParams(pretrained=str(tmp_path / "mine.pt")), 0, tmp_path / "w.pt")
    ours, theirs = (torch.load(tmp_path / name, weights_only=True)["state_dict"] for name in ("mine.pt", "w.pt"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_an_unreadable_local_checkpoint_names_the_key(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        GuieError, match=r"model.pretrained: .*broken.pt is not a guie-tiny-vit checkpoint open_clip can load"
    ):
        materialise_weights(ModelParams(pretrained=str(tmp_path / "broken.pt")), 0, tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists()


def test_a_failed_download_says_what_failed_and_how_to_provide_the_weights(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        try:
            raise OSError("[Errno -3] Temporary failure in name resolution")
        except OSError as err:
            raise RuntimeError("Failed to download weights for tag 'laion2b_s34b_b79k'") from err

    monkeypatch.setattr(open_clip, "create_model", offline)
    params = ModelParams(name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    with pytest.raises(GuieError) as err:
        materialise_weights(params, 0, tmp_path / "w.pt", cache_dir=tmp_path / "hub")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "model.pretrained: could not fetch the 'laion2b_s34b_b79k' weights of model.name ViT-B-32"
    )
    assert "OSError: [Errno -3] Temporary failure in name resolution" in message
    assert "set model.pretrained to a local checkpoint file" in message and f"pre-fill {tmp_path / 'hub'}" in message
    # the fetch command of the hub client installed here (huggingface_hub 2.x has `hf`, not `huggingface-cli`)
    repo_file = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_pytorch_model.bin"
    command = f"`hf download {repo_file} --cache-dir {tmp_path / 'hub'}`"
    assert command in message and "huggingface-cli" not in message


def test_guie_weights_without_network_exits_with_one_line(tmp_path):
    raw = tiny_params_dict()
    raw["model"].update(name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    write_params(tmp_path / "params.yaml", raw)
    # HF_HUB_OFFLINE: the hub client fails at once, as it does (after its retries) on a machine without network
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-m", "guie", "weights", "--params", "params.yaml", "--root", "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output
    assert output.startswith(
        "error: model.pretrained: could not fetch the 'laion2b_s34b_b79k' weights of model.name ViT-B-32"
    )
    assert "local checkpoint file" in output and "HF_HUB_OFFLINE" in output
    assert not (tmp_path / "data" / "weights" / "backbone.pt").exists()


def test_a_pretrained_tags_normalisation_survives_the_weights_file(tmp_path, monkeypatch):
    # SigLIP's tags normalise with mean = std = 0.5, CLIP's with OpenAI's values; open_clip sets them from
    # the tag and forgets them when the weights are reloaded from a file, so the weights file carries them.
    # The tag here is open_clip's own kind of entry for a local mirror ("file"): the real download path.
    from guie.model.backbone import register_model_configs, tower_mean_std

    register_model_configs()
    source = tmp_path / "siglip-mirror.pt"
    torch.save({"state_dict": open_clip.create_model("guie-tiny-siglip").state_dict()}, source)
    tag = {"file": str(source), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "guie-tiny-siglip", {"mirror": tag})
    params = ModelParams(name="guie-tiny-siglip", pretrained="mirror")
    materialise_weights(params, 0, tmp_path / "backbone.pt")
    tower = load_tower(params.name, tmp_path / "backbone.pt")
    assert tower_mean_std(tower) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert tower_mean_std(open_clip.create_model(params.name, pretrained=str(source)).visual) != tower_mean_std(tower)
