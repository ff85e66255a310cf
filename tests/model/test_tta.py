"""Flip TTA inside the artifact (`export.tta: flip`): the features are the renormalised sum of the
L2-normalised head features of an image and its horizontal mirror; off, the embedder is exactly the
plain one, down to its scripted code."""

from __future__ import annotations

import open_clip
import pytest
import torch
from support import tiny_embedder
from torch111 import outputs_in_torch111, torch111_or_skip

from guie.data.transforms import EvalPreprocess
from guie.model.backbone import register_model_configs, set_input_geometry
from guie.model.embedder import Embedder, l2_normalize
from guie.model.head import build_head
from guie.model.legacy import legacy_tower
from guie.model.projection import Projection
from guie.params.export import ExportParams
from guie.scorer_budget import count_flops
from guie.stages.export import script, scripted_bytes

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")

# host-like odd sizes, non-square
SIZES = [(37, 61), (64, 40), (1, 5)]
VIT_SIDE = 64  # guie-tiny-vit at 64 px: a 2x2 grid of 32 px patches, fast enough per test


def _projection(dims_in: int, dims_out: int, seed: int = 3) -> Projection:
    g = torch.Generator().manual_seed(seed)
    return Projection(
        torch.randn(dims_in, generator=g) * 0.1, torch.randn(dims_out, dims_in, generator=g), torch.ones(dims_out)
    )


def _images(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8) for h, w in SIZES]


def _linear(flip_tta: bool) -> Embedder:
    plain = tiny_embedder(projection=_projection(16, 8))
    return Embedder(plain.preprocess, plain.tower, plain.head, plain.projection, flip_tta=flip_tta).eval()


def _tiny_vit(flip_tta: bool) -> Embedder:
    """An open_clip ViT (eager, as training leaves it) + head + projection, every parameter randomised."""
    register_model_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        visual = open_clip.create_model("guie-tiny-vit").visual
        set_input_geometry(visual, "guie-tiny-vit", VIT_SIDE)
        with torch.no_grad():
            for parameter in visual.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
        head = build_head(128, 16, 0.2)
    pre = EvalPreprocess(VIT_SIDE, "squash", (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    return Embedder(pre, visual.eval(), head, _projection(16, 8), flip_tta=flip_tta).eval()


def _legacy_twin(eager: Embedder) -> Embedder:
    """What the export scripts: the tower rewritten in torch-1.11-safe ops, every weight shared."""
    tower = eager.tower if isinstance(eager.tower, torch.nn.Sequential) else legacy_tower(eager.tower)
    return Embedder(eager.preprocess, tower, eager.head, eager.projection, flip_tta=eager.flip_tta).eval()


def _mean_reference(plain: Embedder, images: torch.Tensor) -> torch.Tensor:
    """Flip TTA written out with a plain embedder: l2(mean of the l2 head features of x and its
    mirror), projected, l2."""
    x = plain.preprocess(images)
    mean = (plain.features(x) + plain.features(x.flip(-1))) / 2
    return l2_normalize(plain.projection(l2_normalize(mean)))


def test_export_params_default_to_no_tta():
    assert ExportParams().tta == "none" and ExportParams(tta="flip").tta == "flip"


@pytest.mark.parametrize("build", [_linear, _tiny_vit], ids=["linear", "tiny_vit"])
@torch.no_grad()
def test_scripted_flip_artifact_equals_the_eager_mean_of_image_and_mirror(build):
    flip, plain = build(True), build(False)
    assert flip.flip_tta and not plain.flip_tta
    scripted = script(_legacy_twin(flip))
    for images in _images():
        expected = _mean_reference(plain, images)
        torch.testing.assert_close(flip(images), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(scripted(images), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("build", [_linear, _tiny_vit], ids=["linear", "tiny_vit"])
@torch.no_grad()
def test_one_batch_of_image_and_mirror_equals_two_tower_calls(build):
    # `features` runs [x; mirror(x)] through the tower as one 2B batch
    flip = build(True)
    x = flip.preprocess(_images()[0])
    separate = l2_normalize(flip.from_tower(flip.tower(x)) + flip.from_tower(flip.tower(x.flip(-1))))
    torch.testing.assert_close(flip.features(x), separate, atol=1e-6, rtol=0)


@pytest.mark.parametrize("build", [_linear, _tiny_vit], ids=["linear", "tiny_vit"])
@torch.no_grad()
def test_an_image_and_its_mirror_get_the_same_embedding(build):
    flip = build(True)
    scripted = script(_legacy_twin(flip))
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (3, 3, 45, 101), generator=g, dtype=torch.uint8)  # non-square, odd sides
    mirrored = images.flip(-1)
    torch.testing.assert_close(flip(mirrored), flip(images), atol=1e-6, rtol=0)
    torch.testing.assert_close(scripted(mirrored), scripted(images), atol=1e-6, rtol=0)
    # the control: without TTA, the mirror's embedding differs
    plain = build(False)
    assert float((plain(mirrored) - plain(images)).abs().max()) > 1e-3


# `Embedder.features` as scripted before flip TTA existed; off, it must stay exactly this
PLAIN_FEATURES_CODE = """def features(self,
    x: Tensor) -> Tensor:
  tower = self.tower
  _0 = (self).from_tower((tower).forward(x, ), )
  return _0
"""


def test_with_flip_off_the_scripted_module_is_the_plain_embedders():
    plain = tiny_embedder(projection=_projection(16, 8))
    off = Embedder(plain.preprocess, plain.tower, plain.head, plain.projection, flip_tta=False).eval()
    on = Embedder(plain.preprocess, plain.tower, plain.head, plain.projection, flip_tta=True).eval()
    s_plain, s_off, s_on = script(plain), script(off), script(on)
    assert s_off.features.code == s_plain.features.code == PLAIN_FEATURES_CODE
    for method in ("forward", "embed_preprocessed", "from_tower"):
        assert getattr(s_off, method).code == getattr(s_plain, method).code
    names = [name for name, _ in s_off.named_children()]
    assert names == ["preprocess", "tower", "head", "projection"]
    assert not hasattr(s_off, "with_mirror") and not hasattr(s_off, "flip_tta")
    assert "with_mirror" in s_on.features.code and "flip" not in s_off.code + s_off.features.code
    # same class code, same weights: the same archive bytes
    assert scripted_bytes(s_off) == scripted_bytes(script(tiny_embedder(projection=_projection(16, 8))))


def test_flip_doubles_the_flops_counted_for_the_scorer():
    for build in (_linear, _tiny_vit):
        with_flip = count_flops(script(_legacy_twin(build(True))))
        without = count_flops(script(_legacy_twin(build(False))))
        assert with_flip == pytest.approx(2 * without, rel=0.01), build.__name__


def test_the_flip_artifact_loads_and_matches_in_torch111(tmp_path):
    python = torch111_or_skip()
    for build in (_linear, _tiny_vit):
        eager = build(True)
        archive = scripted_bytes(script(_legacy_twin(eager)))
        for i, images in enumerate(_images(seed=11)):
            folder = tmp_path / f"{build.__name__}{i}"
            folder.mkdir()
            with torch.no_grad():
                expected = eager(images)
            got = outputs_in_torch111(python, archive, images, folder)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
