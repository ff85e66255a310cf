"""EvalPreprocess.stepped_downscale (set for CUDA exports): huge images are halved first so that no
antialiased resize shrinks a side more than MAX_AA_DOWNSCALE times (torch 1.11's CUDA kernel
refuses large factors); normal sizes are untouched."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from guie.data.transforms import MAX_AA_DOWNSCALE, EvalPreprocess

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")

MEAN, STD = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)


class ResizeCalls(TorchDispatchMode):
    """Records (input h, w, output h, w) of every antialiased bicubic resize."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._upsample_bicubic2d_aa.default:
            x, size = args[0], args[1]
            self.calls.append((x.shape[-2], x.shape[-1], size[0], size[1]))
        return func(*args, **(kwargs or {}))


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _pair(resize: str) -> tuple[EvalPreprocess, EvalPreprocess]:
    return EvalPreprocess(224, resize, MEAN, STD), EvalPreprocess(224, resize, MEAN, STD, stepped_downscale=True)


@pytest.mark.parametrize("resize", ["squash", "shortest_side_crop"])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (37, 300), (512, 512), (896, 896), (300, 896)])
def test_normal_sizes_are_unchanged(resize, h, w):
    single, stepped = _pair(resize)
    x = _image(h, w)
    with ResizeCalls() as calls:
        out = stepped(x)
    assert len(calls.calls) == 1
    torch.testing.assert_close(out, single(x), rtol=0, atol=0)


# shortest_side_crop scales the short side to 224, so only a long short side downscales
@pytest.mark.parametrize(
    ("resize", "h", "w"),
    [
        ("squash", 37, 2000),
        ("squash", 3000, 2500),
        ("squash", 9000, 40),
        ("shortest_side_crop", 3000, 2500),
        ("shortest_side_crop", 1000, 4000),
    ],
)
def test_huge_images_are_halved_until_every_resize_is_within_the_factor(resize, h, w):
    single, stepped = _pair(resize)
    # smooth content: the halving's extra rounding shows on edges, not on what a photo mostly is
    x = (
        torch.nn.functional.interpolate(_image(h // 16 + 1, w // 16 + 1).float(), size=[h, w], mode="bilinear")
        .round()
        .to(torch.uint8)
    )
    with ResizeCalls() as calls:
        out = stepped(x)
    assert len(calls.calls) > 1
    for ih, iw, oh, ow in calls.calls:
        assert ih <= MAX_AA_DOWNSCALE * oh and iw <= MAX_AA_DOWNSCALE * ow, calls.calls
    assert calls.calls[0][:2] == (h, w) and out.shape == (1, 3, 224, 224)
    # close to the single resize: mean difference well under one grey level of 255
    assert float((stepped.resize(x) - single.resize(x)).abs().mean()) < 1.0


def test_scripted_stepped_preprocess_matches_eager():
    _, stepped = _pair("shortest_side_crop")
    scripted = torch.jit.script(stepped)
    for h, w in [(37, 2000), (1200, 900), (64, 64)]:
        x = _image(h, w, seed=h)
        torch.testing.assert_close(scripted(x), stepped(x), rtol=0, atol=0)
