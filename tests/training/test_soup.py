"""Weight soups: a stage trained once per ingredient from one start, the runs' weights averaged
(uniformly, or greedily on the selection split); every ingredient and the soup reported. WiSE-FT:
the weights interpolated between the stage's start and its trained weights, the mixing coefficient
chosen on the selection split."""

import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from support import free_port, tiny_params_dict, train_in, write_params

from guie.layout import Layout
from guie.params.load import load_params
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest
from guie.stages.weights import materialise_weights
from guie.training.soup import WEIGHT_PARTS, greedy_soup, interpolate, load_state, uniform_soup, wise_ft


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


def test_processes_get_the_soup_one_of_them_made(tmp_path):
    """Under torchrun the main process averages (or interpolates) and writes the result once; every
    process gets the same soup a single process makes, and no shared file is left behind."""
    paths = _files(tmp_path, [1.0, 3.0, 10.0, 2.0])
    for i, path in enumerate(paths):
        path.rename(tmp_path / f"run{i}.pt")
    paths = [tmp_path / f"run{i}.pt" for i in range(4)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    worker = Path(__file__).parents[1] / "soup_sharing_worker.py"
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(tmp_path)], env=env | {"RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]

    def score(state: dict) -> float:
        return -abs(float(state["tower"]["w"][0, 0]) - 2.5)

    alone = {"uniform": uniform_soup(paths)[0], "greedy": greedy_soup(paths, score)[0]}
    alone["wise"] = wise_ft(load_state(paths[0]), load_state(paths[2]), [0.0, 0.5, 1.0], score)[0]
    for rank in range(2):
        got = torch.load(tmp_path / f"got{rank}.pt", weights_only=True)
        assert got["chosen"] == [1, 3] and got["alpha"] == 0.0
        for name, state in alone.items():
            for part in WEIGHT_PARTS:
                assert got[name][part].keys() == state[part].keys()
                assert all(torch.equal(v, state[part][k]) for k, v in got[name][part].items()), (name, part)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got0.pt", "got1.pt", *(p.name for p in paths)]


def _anonymous_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class _PeakAnonymous:
    """The most anonymous (private, not file-backed) memory this process held above the start
    while the block ran, sampled every millisecond by a thread (torch ops release the GIL)."""

    def __enter__(self):
        # glibc: every buffer over 1 MiB its own mapping, unmapped when freed (not kept for reuse, nor
        # fragmented): the anonymous memory is then what the code holds
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
        self.start = self.peak = _anonymous_bytes()
        self.running = True
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _anonymous_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _anonymous_bytes())
        self.growth = self.peak - self.start
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 32 << 20)  # where glibc's own threshold ends up


def test_a_five_ingredient_soup_holds_about_one_model_in_memory(tmp_path):
    """The runs are memory-mapped and averaged a tensor at a time: a 5-ingredient soup (uniform, or
    greedy with every candidate built and scored) peaks far below the five runs or a float64 copy
    of them, under 2.5x the model's float32 size."""
    g = torch.Generator().manual_seed(0)
    shapes = [(1024, 1024)] * 10 + [(4096,)] * 4  # 40 MiB of float32
    paths = []
    for i in range(5):
        tower = {f"w{k}": torch.randn(shape, generator=g) for k, shape in enumerate(shapes)}
        state = {"stage": "s", "tower": tower | {"n": torch.tensor(i)}, "head": {"b": torch.randn(8)}, "margin": {}}
        torch.save(state, tmp_path / f"{i}.pt")
        paths.append(tmp_path / f"{i}.pt")
        del state, tower
    model_bytes = sum(4 * torch.Size(s).numel() for s in shapes) + 4 * 8
    gc.collect()

    with _PeakAnonymous() as uniform:
        state, _ = uniform_soup(paths)
    first = load_state(paths[0])
    expected = sum(load_state(p)["tower"]["w3"].double() for p in paths) / 5
    assert torch.equal(state["tower"]["w3"], expected.float()) and int(state["tower"]["n"]) == 0
    del state, first, expected
    gc.collect()
    with _PeakAnonymous() as greedy:
        state, chosen, _, _ = greedy_soup(paths, lambda s: 0.0)  # every candidate scores the same: all added
    assert chosen == [0, 1, 2, 3, 4]
    del state
    print(f"peak: uniform {uniform.growth / model_bytes:.2f}x, greedy {greedy.growth / model_bytes:.2f}x the model")
    assert uniform.growth < 2.5 * model_bytes and greedy.growth < 2.5 * model_bytes


def test_interpolation_is_the_start_at_0_the_end_at_1_and_linear_in_between():
    start, end = _state(0.1, steps=3), _state(0.7, steps=9)
    for alpha, expected in ((0.0, start), (1.0, end)):
        mixed = interpolate(start, end, alpha)
        for part in WEIGHT_PARTS:
            for key, value in mixed[part].items():
                if value.is_floating_point():  # exact: no float round-off at the ends
                    assert torch.equal(value, expected[part][key]) and value.dtype == torch.float32
    for alpha in (0.25, 0.5, 0.9):
        mixed = interpolate(start, end, alpha)
        torch.testing.assert_close(mixed["tower"]["w"], torch.full((2, 2), 0.1 + alpha * 0.6), rtol=0, atol=1e-7)
        torch.testing.assert_close(mixed["head"]["b"], torch.full((3,), 0.2 + alpha * 1.2), rtol=0, atol=1e-7)
        torch.testing.assert_close(mixed["margin"]["weight"], torch.full((1, 2), -0.1 - alpha * 0.6), rtol=0, atol=1e-7)
        assert int(mixed["tower"]["bn.num_batches_tracked"]) == 9  # integer buffers: the trained run's
    # the halfway point of any two states is their uniform soup
    g = torch.Generator().manual_seed(0)
    a, b = _state(0.0), _state(0.0)
    a["tower"]["w"], b["tower"]["w"] = torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)
    expected = ((a["tower"]["w"].double() + b["tower"]["w"].double()) / 2).float()
    assert torch.equal(interpolate(a, b, 0.5)["tower"]["w"], expected)


def test_wise_ft_scores_every_alpha_and_keeps_the_best_the_smaller_on_a_tie():
    start, end = _state(0.0), _state(1.0)
    seen = []

    def score(state: dict) -> float:  # best at a tower weight of 0.6; 0.4 and 0.8 tie
        seen.append(float(state["tower"]["w"][0, 0]))
        return -round(abs(seen[-1] - 0.6), 6)

    state, alpha, scores = wise_ft(start, end, [0.0, 0.4, 0.6, 0.8, 1.0], score)
    assert seen == pytest.approx([0.0, 0.4, 0.6, 0.8, 1.0])
    assert alpha == 0.6 and scores == pytest.approx([-0.6, -0.2, 0.0, -0.2, -0.4])
    assert torch.equal(state["tower"]["w"], interpolate(start, end, 0.6)["tower"]["w"])
    _, tie, _ = wise_ft(start, end, [1.0, 0.8, 0.4], score)
    assert tie == 0.4  # 0.4 and 0.8 score alike: the one nearer the start


def _train(params, layout, stage: str, folder) -> dict:
    """Train `stage` into folder/model.pt (metrics and resume state inside `folder` too)."""
    return train_in(
        params,
        layout,
        stage,
        out=folder / "model.pt",
        metrics_dir=folder / "metrics",
        checkpoint=folder / "ck" / "last.pt",
    )


def _start_recorder(monkeypatch) -> list[dict]:
    """Make every training run record its starting weights and train nothing."""
    starts = []

    def record(params, optimisation, spec, *args):
        state = optimisation.model.state(spec.stage)
        starts.append({part: {k: v.clone() for k, v in state[part].items()} for part in WEIGHT_PARTS})
        return {"epoch": 0, "loss": 0.0, "heldout_mp5": 0.0, "compute": "cpu"}

    monkeypatch.setattr("guie.stages.train.fit", record)
    return starts


def test_every_ingredient_of_a_soup_starts_from_the_same_weights(soup_project, tmp_path, monkeypatch):
    # a soup of a first stage: the fresh head and margin head are drawn once, from the stage's seed
    raw, layout = soup_project
    raw = json.loads(json.dumps(raw))
    raw["train"]["stages"]["head"]["soup"] = {"ingredients": [{"seed": 1}, {"seed": 2, "augment": {"hflip": 0.0}}]}
    params = load_params(write_params(tmp_path / "params.yaml", raw))
    starts = _start_recorder(monkeypatch)
    _train(params, layout, "head", tmp_path / "soup")
    # ... and the one the stage has without a soup (drawn from seed + depth, not an ingredient's seed)
    del raw["train"]["stages"]["head"]["soup"]
    plain = load_params(write_params(tmp_path / "plain.yaml", raw))
    _train(plain, layout, "head", tmp_path / "plain")
    assert len(starts) == 3
    for other in starts[1:]:
        for part in WEIGHT_PARTS:
            assert other[part].keys() == starts[0][part].keys()
            assert all(torch.equal(other[part][k], starts[0][part][k]) for k in other[part]), part


@pytest.fixture(scope="module")
def wise_runs(soup_project, tmp_path_factory):
    """The finetune stage trained plainly and with WiSE-FT over three mixing coefficients."""
    raw, layout = soup_project
    tmp = tmp_path_factory.mktemp("wise")
    params = load_params(write_params(tmp / "params.yaml", raw))
    trained = _train(params, layout, "finetune", tmp / "trained")
    raw = json.loads(json.dumps(raw))
    raw["train"]["stages"]["finetune"]["wise_ft"] = [0.0, 0.5, 1.0]
    params = load_params(write_params(tmp / "wise.yaml", raw))
    summary = _train(params, layout, "finetune", tmp / "wise")
    return layout, tmp, trained, summary


def test_wise_ft_reports_each_alphas_selection_mp5_and_writes_the_chosen_interpolation(wise_runs):
    layout, tmp, trained_summary, summary = wise_runs
    report = json.loads((tmp / "wise" / "metrics" / "metrics.json").read_text())
    wise = report["wise_ft"]
    points = [wise["points"][str(i)] for i in range(3)]
    assert [p["alpha"] for p in points] == [0.0, 0.5, 1.0]
    assert all(0 <= p["selection_mp5"] <= 1 for p in points)
    best = max(points, key=lambda p: (p["selection_mp5"], -p["alpha"]))
    assert wise["alpha"] == best["alpha"] == summary["wise_ft_alpha"]
    assert wise["selection_mp5"] == best["selection_mp5"]
    assert report["heldout_mp5"] == wise["heldout_mp5"] == pytest.approx(summary["heldout_mp5"])
    # the stage's model: (1 - alpha) * its start (the head stage's model) + alpha * the trained weights
    start = load_state(layout.trained("head"))
    trained = load_state(tmp / "trained" / "model.pt")
    written = load_state(tmp / "wise" / "model.pt")
    expected = interpolate(start, trained, wise["alpha"])
    for part in WEIGHT_PARTS:
        assert written[part].keys() == trained[part].keys()
        for key, value in written[part].items():
            assert torch.equal(value, expected[part][key]), (part, key)
    assert written["classes"] == trained["classes"] and written["depth"] == trained["depth"]


def test_wise_ft_at_alpha_1_alone_is_the_trained_model_and_at_0_the_start(soup_project, wise_runs, tmp_path):
    raw, layout = soup_project
    _, tmp, _, _ = wise_runs
    trained, start = load_state(tmp / "trained" / "model.pt"), load_state(layout.trained("head"))
    for alpha, expected in ((1.0, trained), (0.0, start)):
        changed = json.loads(json.dumps(raw))
        changed["train"]["stages"]["finetune"]["wise_ft"] = [alpha]
        params = load_params(write_params(tmp_path / f"{alpha}.yaml", changed))
        _train(params, layout, "finetune", tmp_path / str(alpha))
        written = load_state(tmp_path / str(alpha) / "model.pt")
        for part in WEIGHT_PARTS:
            assert all(torch.equal(v, expected[part][k]) for k, v in written[part].items() if v.is_floating_point())
