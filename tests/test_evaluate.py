import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from support import save_image_row, tiny_params_dict

from guie.contract import MODEL_MEMBER
from guie.data.manifest import ManifestRow, write_table
from guie.data.transforms import EvalPreprocess
from guie.errors import GuieError
from guie.metric import bootstrap_standard_error
from guie.model.backbone import load_tower, tower_mean_std
from guie.params.load import parse_params
from guie.retrieval_task import build_task
from guie.stages.evaluate import EvaluatePaths, run_evaluate, summarise, zero_shot_embedder
from guie.stages.weights import materialise_weights

K = 5

# The held-out task, built by hand. The stand-in submission embeds an image as its top-left pixel,
# so every distance below is plain RGB arithmetic. Each class's first image (by path) is its query.
HELDOUT = {  # label: (domain, colours of its images in path order)
    "a": ("cars", [(0, 0, 0), (10, 0, 0), (20, 0, 0)]),
    "b": ("cars", [(100, 100, 100), (101, 100, 100), (102, 100, 100), (103, 100, 100)]),
    "c": ("toys", [(200, 0, 200), (250, 250, 0)]),
    "e": ("toys", [(60, 60, 200)]),  # one image: nothing left for the index, so no query
}
PCA_SET = [(5, 0, 0), (201, 0, 200), (202, 0, 200), (0, 255, 0), (255, 255, 255)]  # distractors too
# a/0: p0 (5), a/1 (10) -> 1 of min(2 relevant, 5) counted = 0.5
# b/0: b/1 (1), b/2 (2), b/3 (3) -> 3 of 3 = 1.0
# c/0: p1 (1) -> 0 of 1 = 0.0
HAND_MP5, HAND_BY_DOMAIN = (0.5 + 1.0 + 0.0) / 3, {"cars": (0.5 + 1.0) / 2, "toys": 0.0}


class TopLeftPixelPreprocess(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :1, :1].float()


class TopLeftPixelEmbedder(torch.nn.Module):
    """Shaped like guie's Embedder: preprocessing per image, then embedding of preprocessed batches."""

    def __init__(self):
        super().__init__()
        self.preprocess = TopLeftPixelPreprocess()

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_preprocessed(self.preprocess(x))


class TopLeftPixel(torch.nn.Module):
    """A stand-in artifact, shaped as export wraps the embedder; `offset` tampers with its forward only."""

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.embedder = TopLeftPixelEmbedder()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder(x) + self.offset


def write_submission(module: torch.nn.Module, path) -> None:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MODEL_MEMBER, buf.getvalue())


def solid(colour, size) -> Image.Image:
    return Image.new("RGB", size, colour)


def tiny_eval_params(dims: int = 2):
    raw = tiny_params_dict()
    raw["pca"].update(dims=dims, device="cpu", batch_size=2)
    return parse_params(raw)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Images, manifest, tiny random tower weights and a host-style submission zip; run_evaluate once."""
    root = tmp_path_factory.mktemp("evaluate")
    params = tiny_eval_params()
    rows = []
    for label, (domain, colours) in HELDOUT.items():
        for i, colour in enumerate(colours):
            rows.append(
                save_image_row(
                    root, f"data/raw/held/{label}/{i}.png", solid(colour, (40 + 3 * i, 36)), label, domain, "heldout"
                )
            )
    for i, colour in enumerate(PCA_SET):
        rows.append(
            save_image_row(root, f"data/raw/pca/p{i}.png", solid(colour, (48, 40 + i)), "pca", "apparel", "pca")
        )
    for i in range(3):  # a training class: never a query, never in the index
        rows.append(save_image_row(root, f"data/raw/train/t/{i}.png", solid((1, 1, i), (40, 40)), "t", "cars", "train"))
    manifest = root / "data" / "manifest" / "manifest.csv"
    write_table(rows, manifest)
    weights = root / "data" / "weights" / "backbone.pt"
    materialise_weights(params.model, params.seed, weights)
    submission = root / "submission" / "submission.zip"
    write_submission(TopLeftPixel(), submission)
    out_json, plots = root / "metrics" / "evaluate" / "evaluate.json", root / "metrics" / "evaluate"
    paths = EvaluatePaths(
        project_root=root, manifest=manifest, weights=weights, submission=submission, out_json=out_json, plots_dir=plots
    )
    returned = run_evaluate(params, paths)
    return dict(
        root=root,
        params=params,
        rows=rows,
        weights=weights,
        returned=returned,
        written=json.loads(out_json.read_text()),
        plots=plots,
    )


def test_evaluate_json_scores_the_hand_built_task(project):
    m = project["written"]
    assert m == project["returned"]
    assert set(m) == {
        "mp5",
        "mp5_se",
        "mp5_zero_shot",
        "mp5_zero_shot_se",
        "mp5_by_domain",
        "mp5_zero_shot_by_domain",
        "queries",
        "index_size",
        "artifact_sample",
        "artifact_sample_max_abs_error",
        "artifact_sample_min_cosine",
    }
    assert m["mp5"] == pytest.approx(HAND_MP5, abs=1e-12)
    assert m["mp5_by_domain"] == pytest.approx(HAND_BY_DOMAIN, abs=1e-12)
    assert m["queries"] == 3  # a, b, c: e has no image left for the index, t is not held out
    assert m["index_size"] == (2 + 3 + 1) + len(PCA_SET)
    # every one of the 3 + 11 images also went through the host's call, and agreed exactly
    assert (m["artifact_sample"], m["artifact_sample_max_abs_error"], m["artifact_sample_min_cosine"]) == (14, 0.0, 1.0)
    params = project["params"]
    assert m["mp5_se"] == pytest.approx(
        bootstrap_standard_error(np.array([0.5, 1.0, 0.0]), params.evaluate.bootstrap, params.seed), abs=1e-12
    )


def naive_tower_features(tower, preprocess, root, rows) -> np.ndarray:
    """Each image alone, decoded as the host does, through the tower, divided by its norm (float64)."""
    out = []
    with torch.no_grad():
        for row in rows:
            x = torch.from_numpy(np.array(Image.open(root / row.path).convert("RGB"))).permute(2, 0, 1).unsqueeze(0)
            f = tower(preprocess(x))[0].double().numpy()
            out.append(f / np.linalg.norm(f))
    return np.stack(out)


def naive_pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:dims]


def naive_zero_shot(project):
    """Untrained tower -> L2 -> numpy-SVD PCA fitted on the PCA set -> L2; then each query against
    every index image by a plain loop: sort by distance, count relevant hits among min(n_q, k)."""
    root, params, rows = project["root"], project["params"], project["rows"]
    tower = load_tower(params.model.name, project["weights"]).eval()
    mean_rgb, std_rgb = tower_mean_std(tower)
    preprocess = EvalPreprocess(params.preprocess.image_size, params.preprocess.resize, mean_rgb, std_rgb)
    pca_rows = [r for r in rows if r.split == "pca"]
    mean, components = naive_pca(naive_tower_features(tower, preprocess, root, pca_rows), params.pca.dims)

    def embed(subset):
        e = (naive_tower_features(tower, preprocess, root, subset) - mean) @ components.T
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    queries, index, domain = [], [], {}
    for label in sorted(HELDOUT):
        mine = sorted((r for r in rows if r.label == label), key=lambda r: r.path)
        if len(mine) > 1:
            queries.append((mine[0], {r.path for r in mine[1:]}))
            index += mine[1:]
    index += sorted(pca_rows, key=lambda r: r.path)
    q_emb, i_emb = embed([q for q, _ in queries]), embed(index)

    scores = []
    for (query, relevant), qe in zip(queries, q_emb, strict=True):
        distances = [(float(np.sqrt(np.sum((qe - ie) ** 2))), j) for j, ie in enumerate(i_emb)]
        ranked = sorted(distances)
        n = min(len(relevant), K)
        # the reference must not hinge on a float near-tie across the counted boundary
        if n < len(ranked) and (index[ranked[n - 1][1]].path in relevant) != (index[ranked[n][1]].path in relevant):
            assert ranked[n][0] - ranked[n - 1][0] > 1e-5
        hits = sum(1 for _, j in ranked[:n] if index[j].path in relevant)
        scores.append(hits / n)
        domain.setdefault(query.domain, []).append(hits / n)
    return scores, {d: sum(v) / len(v) for d, v in domain.items()}


def test_zero_shot_scores_equal_a_naive_recomputation(project):
    m, params = project["written"], project["params"]
    scores, by_domain = naive_zero_shot(project)
    assert m["mp5_zero_shot"] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    assert m["mp5_zero_shot_by_domain"] == pytest.approx(by_domain, abs=1e-12)
    assert m["mp5_zero_shot_se"] == pytest.approx(
        bootstrap_standard_error(np.array(scores), params.evaluate.bootstrap, params.seed), abs=1e-12
    )


def test_domain_csv_and_plots(project):
    m = project["written"]
    with (project["plots"] / "mp5_by_domain.csv").open(newline="") as f:
        table = [(r["domain"], r["model"], float(r["mp5"])) for r in csv.DictReader(f)]
    expected = []
    for d in sorted(HAND_BY_DOMAIN):
        expected += [(d, "zero_shot", m["mp5_zero_shot_by_domain"][d]), (d, "finetuned", HAND_BY_DOMAIN[d])]
    assert [t[:2] for t in table] == [e[:2] for e in expected]
    np.testing.assert_allclose([t[2] for t in table], [e[2] for e in expected], atol=5e-7)
    for png in ("mp5_by_domain.png", "retrieval_grid.png"):
        assert (project["plots"] / png).stat().st_size > 0


def test_zero_shot_embedder_has_no_head_and_projects_the_pca_sets_tower_features(project):
    root, params, rows = project["root"], project["params"], project["rows"]
    pca_rows = [r for r in rows if r.split == "pca"]
    embedder = zero_shot_embedder(params, project["weights"], pca_rows, root, torch.device("cpu"))
    assert embedder.head is None and not embedder.training

    features = naive_tower_features(embedder.tower, embedder.preprocess, root, pca_rows)
    mean, components = naive_pca(features, params.pca.dims)
    np.testing.assert_allclose(embedder.projection.mean.double().numpy(), mean, atol=1e-6)
    got = embedder.projection.components.double().numpy()
    np.testing.assert_allclose(np.abs(np.sum(got * components, axis=1)), 1.0, atol=1e-4)  # same axes, up to sign
    assert torch.equal(embedder.projection.scale, torch.ones(params.pca.dims))  # pca.whiten is false

    # its forward: tower -> L2 -> PCA -> L2, no head in between
    x = torch.from_numpy(np.array(Image.open(root / rows[0].path))).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        out = embedder(x)[0].double().numpy()
    f = naive_tower_features(embedder.tower, embedder.preprocess, root, rows[:1])[0]
    e = (f - embedder.projection.mean.double().numpy()) @ got.T
    np.testing.assert_allclose(out, e / np.linalg.norm(e), atol=1e-5)


def _row(path, label, domain):
    return ManifestRow(path, "0" * 64, "s", domain, label, "heldout", 10, 10)


def test_summarise_equals_a_plain_loop(tiny_params):
    heldout = [
        _row(f"{c}/{i}.jpg", c, "cars" if c in "ab" else "toys" if c in "cd" else "art")
        for c in "abcdef"
        for i in range(3)
    ]
    task = build_task(heldout, [], queries_per_class=2)
    per_query = dict(zip(task.solution, np.random.default_rng(0).random(len(task.solution)), strict=True))

    mean, se, by_domain = summarise(task, per_query, tiny_params)
    total, sums, counts = 0.0, {}, {}
    for q in task.queries:
        total += per_query[q.path]
        sums[q.domain] = sums.get(q.domain, 0.0) + per_query[q.path]
        counts[q.domain] = counts.get(q.domain, 0) + 1
    assert mean == pytest.approx(total / len(task.queries), abs=1e-12)
    assert list(by_domain) == ["art", "cars", "toys"]
    assert by_domain == pytest.approx({d: sums[d] / counts[d] for d in sums}, abs=1e-12)
    in_query_order = np.array([per_query[q.path] for q in task.queries])
    assert se == bootstrap_standard_error(in_query_order, tiny_params.evaluate.bootstrap, tiny_params.seed)


def test_no_usable_heldout_class_names_the_fix(tmp_path):
    params = tiny_eval_params()
    rows = [save_image_row(tmp_path, f"h/{c}.png", solid((9, 9, 9), (40, 40)), c, "cars", "heldout") for c in "ab"]
    manifest = tmp_path / "manifest.csv"
    write_table(rows, manifest)
    (tmp_path / "submission.zip").write_bytes(b"never read")
    with pytest.raises(
        GuieError, match="no held-out class has more than 1 images; raise data.manifest.heldout_fraction"
    ):
        paths = EvaluatePaths(
            project_root=tmp_path,
            manifest=manifest,
            weights=tmp_path / "w.pt",
            submission=tmp_path / "submission.zip",
            out_json=tmp_path / "e.json",
            plots_dir=tmp_path / "plots",
        )
        run_evaluate(params, paths)
    assert not (tmp_path / "e.json").exists()


def test_an_artifact_whose_host_call_disagrees_with_its_batched_embedding_is_refused(project, tmp_path):
    root, params = project["root"], project["params"]
    tampered = tmp_path / "submission.zip"
    write_submission(TopLeftPixel(offset=1e-3), tampered)  # its parts unchanged, its forward shifted
    out_json = tmp_path / "evaluate.json"
    with pytest.raises(GuieError, match=r"submission\.zip: the artifact called the host's way .*disagree on data/raw/"):
        paths = EvaluatePaths(
            project_root=root,
            manifest=root / "data/manifest/manifest.csv",
            weights=project["weights"],
            submission=tampered,
            out_json=out_json,
            plots_dir=tmp_path,
        )
        run_evaluate(params, paths)
    assert not out_json.exists()


def test_the_host_calls_cover_a_seeded_sample_of_evaluate_artifact_sample_images(project, tmp_path, monkeypatch):
    import guie.embed

    root, raw = project["root"], tiny_params_dict()
    raw["pca"].update(dims=2, device="cpu", batch_size=2)
    raw["evaluate"]["artifact_sample"] = 4
    params = parse_params(raw)
    called = []
    real = guie.embed.embed_like_host
    monkeypatch.setattr(
        guie.embed, "embed_like_host", lambda model, paths, *a: called.append(paths) or real(model, paths)
    )
    out_json = tmp_path / "evaluate.json"
    paths = EvaluatePaths(
        project_root=root,
        manifest=root / "data/manifest/manifest.csv",
        weights=project["weights"],
        submission=root / "submission" / "submission.zip",
        out_json=out_json,
        plots_dir=tmp_path,
    )
    m = run_evaluate(params, paths)
    assert m["artifact_sample"] == 4 and len(called) == 1 and len(called[0]) == 4
    assert {k: v for k, v in m.items() if not k.startswith("artifact_sample")} == {
        k: v for k, v in project["written"].items() if not k.startswith("artifact_sample")
    }
