"""Weight soups: a stage trained once per ingredient, the runs' weights averaged (uniformly, or
greedily on the selection split); every ingredient and the soup reported."""

import json

import pytest
import torch
from support import tiny_params_dict, train_in, write_params

from guie.layout import Layout
from guie.params.load import load_params
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest
from guie.stages.weights import materialise_weights
from guie.training import soup as soup_module
from guie.training.soup import WEIGHT_PARTS, greedy_soup, load_state, uniform_soup


def _state(value: float, steps: int = 7) -> dict:
    return {
        "stage": "s",
        "tower": {"w": torch.full((2, 2), value), "bn.num_batches_tracked": torch.tensor(steps)},
        "head": {"b": torch.full((3,), 2 * value)},
        "margin": {"weight": torch.full((1, 2), -value)},
    }


def _files(tmp_path, values) -> list:
    paths = []
    for i, v in enumerate(values):
        torch.save(_state(v, steps=i + 1), tmp_path / f"{i}.pt")
        paths.append(tmp_path / f"{i}.pt")
    return paths


def test_a_uniform_soup_is_the_mean_of_every_ingredients_weights(tmp_path):
    state, chosen = uniform_soup(_files(tmp_path, [1.0, 2.0, 6.0]))
    assert chosen == [0, 1, 2]
    assert torch.equal(state["tower"]["w"], torch.full((2, 2), 3.0))
    assert torch.equal(state["head"]["b"], torch.full((3,), 6.0)) and torch.equal(
        state["margin"]["weight"], torch.full((1, 2), -3.0)
    )
    assert int(state["tower"]["bn.num_batches_tracked"]) == 1  # integer buffers: the first run's
    assert state["stage"] == "s"


def test_a_greedy_soup_adds_runs_best_first_while_the_score_does_not_drop(tmp_path):
    # score: closeness of the tower weight to 2.5; runs score 1 -> 1.5 away, 3 -> 0.5, 10 -> 7.5, 2 -> 0.5
    paths = _files(tmp_path, [1.0, 3.0, 10.0, 2.0])
    scored = []

    def score(state: dict) -> float:
        value = -abs(float(state["tower"]["w"][0, 0]) - 2.5)
        scored.append(value)
        return value

    state, chosen, own, best = greedy_soup(paths, score)
    assert own == [-1.5, -0.5, -7.5, -0.5]
    # order 1 (3.0), 3 (2.0; tie broken by index), 0, 2: {3, 2} averages 2.5 (better: added), then
    # {3, 2, 1} = 2.0 (worse: left out), {3, 2, 10} = 5.0 (worse: left out)
    assert chosen == [1, 3]
    assert best == 0.0 and torch.equal(state["tower"]["w"], torch.full((2, 2), 2.5))
    equal = greedy_soup(_files(tmp_path, [2.0, 2.0]), lambda s: -abs(float(s["tower"]["w"][0, 0]) - 2.0))
    assert equal[1] == [0, 1]  # an equal score still adds the run


@pytest.fixture(scope="module")
def soup_project(tmp_path_factory):
    """A tiny project with a selection split, trained up to its first stage."""
    raw = tiny_params_dict()
    raw["data"]["manifest"]["selection_fraction"] = 0.2
    layout = Layout(tmp_path_factory.mktemp("soup"))
    params = load_params(write_params(layout.root / "params.yaml", raw))
    download_sources(params, layout.root, layout.raw, layout.downloads_dir)
    materialise_weights(params.model, params.seed, layout.weights)
    build_manifest(params, layout.root, layout.raw, layout.manifest, layout.rejected, workers=1)
    train_in(params, layout, "head")
    return raw, layout


def _soup_params(raw: dict, tmp_path, method: str):
    raw = json.loads(json.dumps(raw))
    raw["train"]["stages"]["finetune"]["soup"] = {
        "method": method,
        "ingredients": [{"seed": 0}, {"seed": 1}, {"seed": 2, "augment": {"hflip": 0.0, "cutout": 0.0}}],
    }
    return load_params(write_params(tmp_path / "params.yaml", raw))


@pytest.mark.parametrize("method", ["greedy", "uniform"])
def test_a_soup_stage_trains_each_ingredient_and_writes_the_average_of_the_chosen_ones(
    soup_project, tmp_path, monkeypatch, method
):
    raw, layout = soup_project
    params = _soup_params(raw, tmp_path, method)
    out, metrics, checkpoint = tmp_path / "soup.pt", tmp_path / "m", tmp_path / "ck" / "last.pt"
    summary = train_in(params, layout, "finetune", out=out, metrics_dir=metrics, checkpoint=checkpoint)
    report = json.loads((metrics / "metrics.json").read_text())
    ingredients = [checkpoint.parent / f"ingredient{i}.pt" for i in range(3)]
    chosen = report["soup"]["ingredients"]
    assert summary["ingredients"] == 3 and summary["soup_size"] == len(chosen) >= 1
    assert sorted(report["ingredients"]) == ["0", "1", "2"]
    for i, entry in report["ingredients"].items():
        assert 0 <= entry["heldout_mp5"] <= 1 and entry["in_soup"] == (int(i) in chosen)
        assert ("selection_mp5" in entry) == (method == "greedy")
    if method == "uniform":
        assert chosen == [0, 1, 2]
    # the runs differ (seeds, augmentations), and the soup is their average
    runs = [load_state(p) for p in ingredients]
    assert not torch.equal(runs[0]["head"]["2.weight"], runs[1]["head"]["2.weight"])
    soup = torch.load(out, weights_only=True)
    for part in WEIGHT_PARTS:
        for key, value in soup[part].items():
            if value.is_floating_point():
                expected = torch.stack([runs[i][part][key].double() for i in chosen]).mean(0).float()
                torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
    assert "summary" not in soup and soup["depth"] == 1 and soup["definition"] == runs[0]["definition"]
    assert (metrics / "plots" / "metrics" / "heldout_mp5.tsv").is_file()  # dvc plots: mP@5 per ingredient
    assert report["heldout_mp5"] == pytest.approx(summary["heldout_mp5"])

    # run again (say, after a kill during the averaging): the trained ingredients are not retrained
    def no_training(*args, **kwargs):
        raise AssertionError("an ingredient was retrained")

    monkeypatch.setattr("guie.stages.train.fit", no_training)
    again = train_in(params, layout, "finetune", out=tmp_path / "again.pt", metrics_dir=metrics, checkpoint=checkpoint)
    assert again["heldout_mp5"] == pytest.approx(summary["heldout_mp5"])
    assert (tmp_path / "again.pt").read_bytes() == out.read_bytes()


def test_soup_module_keeps_float64_sums_so_the_average_is_exact(tmp_path):
    paths = _files(tmp_path, [0.1, 0.2, 0.7])
    state, _ = uniform_soup(paths)
    assert torch.equal(state["tower"]["w"], torch.full((2, 2), (0.1 + 0.2 + 0.7) / 3, dtype=torch.float64).float())
    assert soup_module.WeightSum(_state(1.0)).count == 0
