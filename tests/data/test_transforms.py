import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from guie.contract import host_decode
from guie.data.augment import BatchAugment, draw
from guie.data.transforms import EvalPreprocess, EvalTransform, Normalize, ResizeToUint8
from guie.params.train import AugmentParams

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("size", [(1, 1), (37, 2000), (2000, 37), (224, 224), (513, 129)])
@pytest.mark.parametrize("resize", ["squash", "shortest_side_crop"])
def test_any_input_size_gives_the_model_size(size, resize):
    pre = EvalPreprocess(224, resize, MEAN, STD)
    x = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    assert pre(x).shape == (2, 3, 224, 224)


def test_squash_equals_torch_antialiased_bicubic_then_normalise():
    pre = EvalPreprocess(224, "squash", MEAN, STD)
    x = torch.randint(0, 256, (1, 3, 300, 170), dtype=torch.uint8)
    ref = (
        F.interpolate(x.float(), size=(224, 224), mode="bicubic", antialias=True, align_corners=False).clamp(0, 255)
        / 255
    )
    ref = (ref - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(pre(x), ref, rtol=1e-5, atol=1e-4)


def test_shortest_side_crop_keeps_the_centre():
    pre = EvalPreprocess(4, "shortest_side_crop", (0, 0, 0), (1 / 255,) * 3)
    x = torch.zeros(1, 3, 4, 12, dtype=torch.uint8)
    x[..., 4:8] = 255  # a bright centre band exactly the crop's width
    out = pre(x)
    assert out.min() > 200


def test_scripted_preprocess_matches_eager():
    pre = EvalPreprocess(224, "shortest_side_crop", MEAN, STD)
    scripted = torch.jit.script(pre)
    x = torch.randint(0, 256, (1, 3, 123, 457), dtype=torch.uint8)
    torch.testing.assert_close(scripted(x), pre(x))


def test_decode_ignores_exif_orientation_like_the_host(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" when honoured
    img.save(tmp_path / "r.jpg", exif=exif)
    assert host_decode(tmp_path / "r.jpg").shape == (3, 20, 40)


def test_decode_converts_grayscale_and_alpha_to_rgb(tmp_path):
    Image.new("L", (5, 7), 100).save(tmp_path / "g.png")
    Image.new("RGBA", (5, 7), (1, 2, 3, 0)).save(tmp_path / "a.png")
    assert host_decode(tmp_path / "g.png").shape == (3, 7, 5)
    assert host_decode(tmp_path / "a.png")[:, 0, 0].tolist() == [1, 2, 3]


def test_training_view_is_seeded_and_shaped():
    pre = EvalPreprocess(64, "squash", MEAN, STD)
    x = torch.randint(0, 256, (3, 90, 50), dtype=torch.uint8)
    resized = ResizeToUint8(pre)(x)
    assert resized.dtype == torch.uint8 and resized.shape == (3, 64, 64)
    aug, row = BatchAugment(pre), draw(3, AugmentParams()).unsqueeze(0)
    a = aug(resized.unsqueeze(0), row)
    b = aug(resized.unsqueeze(0), row)
    assert a.shape == (1, 3, 64, 64) and torch.equal(a, b)


def test_loader_transforms_keep_their_own_cpu_preprocess_when_the_model_moves():
    # the embedder's preprocess moves to the GPU with the model; the loader's transforms run on the CPU
    # (in workers too), so moving the model (here: to float64, which moves buffers the same way) leaves them alone
    pre = EvalPreprocess(16, "squash", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    transforms = [EvalTransform(pre), Normalize(pre), ResizeToUint8(pre), BatchAugment(pre)]
    pre.to(torch.float64)
    for transform in transforms:
        assert transform.preprocess is not pre and transform.preprocess.mean.dtype == torch.float32
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    assert transforms[0](image).dtype == torch.float32
