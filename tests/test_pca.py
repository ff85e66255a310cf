import csv
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from support import save_image_row, tiny_embedder

from guie.data.manifest import write_table
from guie.errors import GuieError
from guie.model.projection import Projection, fit_projection, load_projection
from guie.params.pca import PcaParams
from guie.stages.pca import PcaPaths, run_pca, write_variance_csv


def _run_pca(params, root, manifest, checkpoint, out, plots_dir) -> dict:
    """run_pca on `checkpoint` (the backbone weights file is not read: the checkpoint holds the tower)."""
    paths = PcaPaths(
        project_root=root,
        manifest=manifest,
        weights=root / "unused.pt",
        checkpoint=checkpoint,
        out=out,
        plots_dir=plots_dir,
    )
    return run_pca(params, paths)


def naive_pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre, SVD: (mean, top components [dims, D], their variances, explained-variance ratios)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    variance = s**2 / (len(x) - 1)
    return mean, vt[:dims], variance[:dims], variance[:dims] / variance.sum()


def same_signs(components: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`reference` with each row's sign flipped to agree with `components` (PCA fixes no sign)."""
    return reference * np.sign(np.sum(components * reference, axis=1, keepdims=True))


def anisotropic(n: int, d: int, seed: int) -> np.ndarray:
    # distinct variances per axis, rotated, off-centre: components and ratios are well separated
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * np.geomspace(4.0, 0.2, d)) @ rotation + rng.normal(size=d)


@pytest.mark.parametrize("whiten", [False, True])
def test_fit_projection_equals_naive_svd_pca(whiten):
    x = anisotropic(80, 12, seed=0)
    proj, ratios = fit_projection(x, 5, whiten=whiten, seed=0)
    mean, components, variance, ref_ratios = naive_pca(x, 5)

    np.testing.assert_allclose(ratios, ref_ratios, rtol=1e-10)
    np.testing.assert_allclose(proj.mean.double().numpy(), mean, rtol=1e-6, atol=1e-7)
    got = proj.components.double().numpy()
    np.testing.assert_allclose(got, same_signs(got, components), atol=1e-6)
    expected_scale = 1 / np.sqrt(variance) if whiten else np.ones(5)
    np.testing.assert_allclose(proj.scale.double().numpy(), expected_scale, rtol=1e-6)

    # outputs on new data: (y - mean) @ components.T, times 1/sqrt(variance) when whitened
    y = anisotropic(7, 12, seed=1)
    with torch.no_grad():
        out = proj(torch.from_numpy(y).float()).double().numpy()
    np.testing.assert_allclose(out, (y - mean) @ same_signs(got, components).T * expected_scale, atol=1e-4)


@pytest.mark.parametrize("whiten", [False, True])
def test_projected_fitting_set_is_centred_with_the_component_variances(whiten):
    x = anisotropic(200, 10, seed=2)
    proj, _ = fit_projection(x, 4, whiten=whiten, seed=0)
    _, _, variance, _ = naive_pca(x, 4)
    with torch.no_grad():
        out = proj(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=0, ddof=1), np.ones(4) if whiten else variance, rtol=1e-4)


def test_projection_forward_equals_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    mean, components, scale = (
        torch.randn(6, generator=g, dtype=torch.float64),
        torch.randn(3, 6, generator=g, dtype=torch.float64),
        torch.rand(3, generator=g, dtype=torch.float64) + 0.5,
    )
    proj = Projection(mean, components, scale)
    assert all(b.dtype == torch.float32 for b in proj.buffers())  # float64 fits are stored as float32
    x = torch.randn(4, 6, generator=g)
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for i in range(4):
        for j in range(3):
            for k in range(6):
                expected[i, j] += (float(x[i, k]) - float(mean[k])) * float(components[j, k])
            expected[i, j] *= float(scale[j])
    torch.testing.assert_close(proj(x).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n, d, dims", [(5, 10, 6), (10, 4, 5)])
def test_refuses_more_dims_than_images_or_feature_dims(n, d, dims):
    x = np.random.default_rng(0).normal(size=(n, d))
    with pytest.raises(GuieError, match=rf"pca\.dims: {dims} components .* the my set has {n} images of {d} dims"):
        fit_projection(x, dims, whiten=False, seed=0, what="my set")


def test_dims_up_to_the_feature_dims_are_accepted():
    x = anisotropic(30, 6, seed=3)
    proj, ratios = fit_projection(x, 6, whiten=True, seed=0)
    assert proj.components.shape == (6, 6) and np.isclose(ratios.sum(), 1.0)


def test_whitening_as_many_components_as_images_is_refused_or_sound():
    # centred data of n images has rank n - 1: a last component would have ~0 variance and whitening
    # would scale it by ~1e15, swamping every embedding
    x = np.random.default_rng(0).normal(size=(8, 16))
    try:
        proj, _ = fit_projection(x, 8, whiten=True, seed=0)
    except GuieError as err:
        assert "pca.dims" in str(err)
        return
    with torch.no_grad():
        out = proj(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(out.var(axis=0, ddof=1), 1.0, rtol=1e-3)


def test_write_variance_csv_cumulative_is_numpy_cumsum(tmp_path):
    ratios = np.random.default_rng(0).dirichlet(np.ones(9))[:7]
    path = tmp_path / "ev.csv"
    write_variance_csv(ratios, path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["component"]) for r in rows] == list(range(1, 8))
    np.testing.assert_allclose([float(r["explained_variance_ratio"]) for r in rows], ratios, atol=5e-7)
    np.testing.assert_allclose([float(r["cumulative"]) for r in rows], np.cumsum(ratios), atol=5e-7)


def test_load_projection_names_the_missing_file(tmp_path):
    with pytest.raises(GuieError, match=r"nope\.pt: PCA not found; run `dvc repro pca`"):
        load_projection(tmp_path / "nope.pt")


@pytest.fixture
def pca_project(tmp_path, tiny_params, monkeypatch):
    """A manifest with 11 PCA-set images of assorted sizes and modes (plus rows of other splits that
    the stage must skip), a stand-in trained embedder, and params fitting 4 whitened dims."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(11):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        rows.append(
            save_image_row(tmp_path, f"data/raw/pca/{i:02d}.png", image.convert("L") if i == 3 else image, split="pca")
        )
    for split in ("train", "heldout"):
        image = Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
        rows.append(save_image_row(tmp_path, f"data/raw/{split}/0.png", image, split=split))
    manifest = tmp_path / "data" / "manifest" / "manifest.csv"
    write_table(rows, manifest)
    checkpoint = tmp_path / "models" / "finetune.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"stand-in")  # load_trained_embedder is replaced below
    embedder = tiny_embedder(seed=1).train()  # the stage must embed in eval mode
    monkeypatch.setattr("guie.stages.pca.load_trained_embedder", lambda params, ckpt, weights: embedder)
    params = dataclasses.replace(tiny_params, pca=PcaParams(dims=4, whiten=True, batch_size=3, device="cpu"))
    return params, manifest, checkpoint, [r for r in rows if r.split == "pca"], embedder


def _unit(f: torch.Tensor) -> np.ndarray:
    f = f.double().numpy()
    return f / np.linalg.norm(f)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_run_pca_fits_the_l2_normalised_head_features_of_the_pca_set(pca_project, tmp_path, tta):
    # PCA is fitted on what the artifact projects: with export.tta flip, the renormalised mean of the
    # image's and its mirror's unit head features; without, the image's alone
    params, manifest, checkpoint, pca_rows, embedder = pca_project
    params = dataclasses.replace(params, export=dataclasses.replace(params.export, tta=tta))
    out, plots = tmp_path / "models" / "pca.pt", tmp_path / "metrics" / "pca"
    result = _run_pca(params, tmp_path, manifest, checkpoint, out, plots)

    # naive reference: each image alone, decoded with PIL, head -> divide by its norm (and with flip,
    # the same for the mirrored preprocessed image, the two summed and divided by their norm), then SVD PCA
    features = []
    embedder.eval()
    with torch.no_grad():
        for row in pca_rows:
            pixels = np.array(Image.open(tmp_path / row.path).convert("RGB"))
            x = embedder.preprocess(torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0))
            f = _unit(embedder.head(embedder.tower(x))[0])
            if tta == "flip":
                f = _unit(torch.from_numpy(f + _unit(embedder.head(embedder.tower(torch.flip(x, [-1])))[0])))
            features.append(f)
    mean, components, variance, ratios = naive_pca(np.stack(features), 4)

    loaded = load_projection(out)
    np.testing.assert_allclose(loaded.mean.double().numpy(), mean, atol=1e-6)
    got = loaded.components.double().numpy()
    np.testing.assert_allclose(got, same_signs(got, components), atol=1e-4)
    np.testing.assert_allclose(loaded.scale.double().numpy(), 1 / np.sqrt(variance), rtol=1e-4)
    state = torch.load(out, weights_only=True)
    np.testing.assert_allclose(state["explained_variance_ratio"].numpy(), ratios, rtol=1e-4)
    assert result == {"images": 11, "dims": 4, "explained_variance": pytest.approx(ratios.sum(), rel=1e-4)}

    with (plots / "explained_variance.csv").open(newline="") as f:
        cumulative = [float(r["cumulative"]) for r in csv.DictReader(f)]
    np.testing.assert_allclose(cumulative, np.cumsum(ratios), atol=1e-5)
    assert (plots / "explained_variance.png").stat().st_size > 0


def test_load_projection_round_trips_what_run_pca_wrote(pca_project, tmp_path):
    params, manifest, checkpoint, _, _ = pca_project
    out = tmp_path / "models" / "pca.pt"
    _run_pca(params, tmp_path, manifest, checkpoint, out, tmp_path / "plots")
    state = torch.load(out, weights_only=True)
    loaded = load_projection(out)
    for name in ("mean", "components", "scale"):
        assert torch.equal(getattr(loaded, name), state[name])
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    expected = (x - state["mean"]) @ state["components"].T * state["scale"]
    torch.testing.assert_close(loaded(x), expected)


def test_run_pca_without_pca_images_names_the_fix(pca_project, tmp_path):
    params, manifest, checkpoint, _, _ = pca_project
    rows = [save_image_row(tmp_path, "data/raw/t/0.png", Image.new("RGB", (32, 32)), split="train")]
    write_table(rows, manifest)
    with pytest.raises(GuieError, match="no PCA-set images .* role: pca"):
        _run_pca(params, tmp_path, manifest, checkpoint, tmp_path / "pca.pt", tmp_path / "plots")
    assert not (tmp_path / "pca.pt").exists()
