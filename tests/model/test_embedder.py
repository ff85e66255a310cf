import numpy as np
import torch
from sklearn.decomposition import PCA

from guie.data.transforms import EvalPreprocess
from guie.model.embedder import Embedder, l2_normalize
from guie.model.head import build_head
from guie.model.projection import Projection, fit_projection


def test_projection_equals_sklearn_transform():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 32))
    proj, ratios = fit_projection(x, 8, whiten=False, seed=0)
    ref = PCA(8, svd_solver="full").fit(x)
    torch.testing.assert_close(
        proj(torch.from_numpy(x).float()), torch.from_numpy(ref.transform(x)).float(), atol=1e-4, rtol=1e-4
    )
    np.testing.assert_allclose(ratios, ref.explained_variance_ratio_)


def test_whitened_projection_has_unit_variance():
    x = np.random.default_rng(1).normal(size=(500, 16)) * np.arange(1, 17)
    proj, _ = fit_projection(x, 4, whiten=True, seed=0)
    out = proj(torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(out.var(axis=0, ddof=1), 1.0, rtol=1e-3)


def test_embedder_projects_the_features_pca_was_fitted_on():
    torch.manual_seed(0)
    pre = EvalPreprocess(32, "squash", (0.5,) * 3, (0.25,) * 3)
    tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 24))
    head = build_head(24, 16, 0.2).eval()
    plain = Embedder(pre, tower, head, None).eval()
    images = torch.randint(0, 256, (40, 3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        feats = plain(images).numpy()
    proj, _ = fit_projection(feats, 8, whiten=False, seed=0)
    full = Embedder(pre, tower, head, proj).eval()
    with torch.no_grad():
        out = full(images)
        expected = l2_normalize(proj(torch.from_numpy(feats)))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(40))


def test_scripted_embedder_without_head_or_projection():
    pre = EvalPreprocess(32, "squash", (0.5,) * 3, (0.25,) * 3)
    tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 24))
    emb = Embedder(pre, tower, None, None).eval()
    x = torch.randint(0, 256, (1, 3, 9, 13), dtype=torch.uint8)
    torch.testing.assert_close(torch.jit.script(emb)(x), emb(x))


def test_projection_module_round_trips_its_state():
    p = Projection(torch.zeros(4), torch.eye(4)[:2], torch.ones(2))
    q = Projection(torch.ones(4), torch.ones(2, 4), torch.ones(2))
    q.load_state_dict(p.state_dict())
    torch.testing.assert_close(q(torch.arange(4.0)[None]), torch.tensor([[0.0, 1.0]]))
