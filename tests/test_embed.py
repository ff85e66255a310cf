import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from support import save_image_row, tiny_embedder
from torchvision.transforms import PILToTensor

from guie.contract import PARITY_TOLERANCE
from guie.data.transforms import EvalPreprocess
from guie.embed import (
    Batching,
    HostSample,
    agreement,
    embed_artifact,
    embed_like_host,
    embed_rows,
    exact_arithmetic,
    sample_positions,
)
from guie.errors import GuieError
from guie.model.backbone import register_model_configs, set_input_geometry, tower_mean_std
from guie.model.deploy import HalfPrecision, OnWeightsDevice
from guie.model.embedder import Embedder, Projection
from guie.model.head import build_head
from guie.stages.export import deployable, legacy_twin


def host_input(path) -> torch.Tensor:
    """What Kaggle's scorer feeds the model: PILToTensor of Image.open(p).convert("RGB"), batched."""
    return PILToTensor()(Image.open(path).convert("RGB")).unsqueeze(0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Odd images the host meets (sizes, grayscale and CMYK JPEGs, RGBA, palette, EXIF-rotated),
    as manifest rows in a deliberately unsorted order."""
    root = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)

    def noise(h, w):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 on display; the host ignores it
    specs = [
        ("z/rgb.png", noise(37, 53)),
        ("a/gray.jpg", noise(40, 30).convert("L")),
        ("m/cmyk.jpg", noise(33, 47).convert("CMYK")),
        ("b/rgba.png", noise(25, 25).convert("RGBA")),
        ("c/one.png", noise(1, 1)),
        ("y/palette.png", noise(50, 20).convert("P")),
        ("d/wide.png", noise(9, 120)),
    ]
    rows = [save_image_row(root, path, image) for path, image in specs]
    rows.append(save_image_row(root, "e/exif.jpg", noise(10, 40), exif=exif))
    assert Image.open(root / "m" / "cmyk.jpg").mode == "CMYK" and Image.open(root / "a" / "gray.jpg").mode == "L"
    assert Image.open(root / "e" / "exif.jpg").getexif()[0x0112] == 6
    return root, rows


def random_projection(seed: int, dims: int = 8, features: int = 16) -> Projection:
    g = torch.Generator().manual_seed(seed)
    return Projection(
        torch.randn(features, generator=g) * 0.1,
        torch.randn(dims, features, generator=g),
        torch.rand(dims, generator=g) + 0.5,
    )


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("projected", [False, True], ids=["features", "projected"])
def test_embed_rows_equals_each_image_embedded_alone_in_row_order(images, batch_size, projected):
    root, rows = images
    embedder = tiny_embedder(seed=2, projection=random_projection(3) if projected else None).train()
    rng_before = torch.get_rng_state()
    out = embed_rows(embedder, rows, root, Batching(batch_size=batch_size))
    assert torch.equal(torch.get_rng_state(), rng_before)  # embedding does not move the global RNG
    assert embedder.training  # the caller's mode is restored

    embedder.eval()
    with torch.no_grad():
        expected = torch.cat([embedder(host_input(root / r.path)) for r in rows]).numpy()
    assert out.dtype == np.float32 and out.shape == (len(rows), 8 if projected else 16)
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_embed_like_host_equals_the_hosts_own_loop_on_a_loaded_torchscript(images):
    root, rows = images
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(tiny_embedder(seed=4, projection=random_projection(5))), buf)
    model = torch.jit.load(io.BytesIO(buf.getvalue())).eval()
    paths = [root / r.path for r in rows]

    out = embed_like_host(model, paths)
    with torch.no_grad():
        expected = np.stack([torch.flatten(model(host_input(p))[0]).numpy() for p in paths])
    assert out.dtype == np.float32 and out.shape == (len(paths), 8)
    np.testing.assert_array_equal(out, expected)


class Probe(torch.nn.Module):
    """Echoes what it was called with: per-channel mean, height and width, as a [1, 1, 5] output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[:2] == (1, 3)
        stats = torch.cat(
            [x.double().mean(dim=(2, 3)), torch.tensor([[float(x.shape[2]), float(x.shape[3])]], dtype=torch.float64)],
            dim=1,
        )
        return stats.view(1, 1, 5)


def test_embed_like_host_passes_stored_pixels_one_image_per_call(images):
    root, rows = images
    out = embed_like_host(Probe(), [root / r.path for r in rows])
    assert out.shape == (len(rows), 5) and out.dtype == np.float32  # [0] then flattened, as the host does
    for row, got in zip(rows, out, strict=True):
        pixels = np.array(Image.open(root / row.path).convert("RGB"), dtype=np.float64)  # no EXIF rotation
        np.testing.assert_allclose(got, [*pixels.mean(axis=(0, 1)), *pixels.shape[:2]], rtol=1e-6)
    exif_row = next(r for r in rows if r.path == "e/exif.jpg")
    assert tuple(out[rows.index(exif_row), 3:]) == (10, 40)  # stored 10 x 40, not the displayed 40 x 10


class Tampered(OnWeightsDevice):
    """An artifact whose forward is not its parts' composition: its outputs shifted by `offset`."""

    def __init__(self, embedder, offset: float):
        super().__init__(embedder)
        self.offset = offset

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images) + self.offset


def tiny_vit_embedder() -> Embedder:
    """guie-tiny-vit (open_clip, seeded random init) at 64 px, a head with non-trivial BatchNorm statistics
    and a random projection: what `guie export` takes, small."""
    register_model_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(8)
        tower = open_clip.create_model("guie-tiny-vit").visual
        set_input_geometry(tower, "guie-tiny-vit", 64, 0)
        head = build_head(128, 16, 0.2)
        with torch.no_grad():
            head[0].running_mean.uniform_(-0.5, 0.5)
            head[0].running_var.uniform_(0.5, 2.0)
    pre = EvalPreprocess(64, "shortest_side_crop", *tower_mean_std(tower))
    return Embedder(pre, tower, head, random_projection(9)).eval()


def exported(embedder, forward_offset: float = 0.0) -> torch.jit.ScriptModule:
    """`embedder` as `guie export` wraps and scripts it (legacy tower, OnWeightsDevice), saved and loaded
    back as the host loads it; `forward_offset` tampers with its forward only (its parts stay as they are)."""
    module = deployable(legacy_twin(embedder), "cpu", half=False)
    if forward_offset:
        module = Tampered(module.embedder, forward_offset)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return torch.jit.load(io.BytesIO(buf.getvalue())).eval()


@pytest.mark.parametrize("batch_size", [3, 64])
def test_an_artifacts_batched_embeddings_equal_its_host_calls_within_the_parity_tolerance(images, batch_size):
    root, rows = images
    model = exported(tiny_vit_embedder())
    out, check = embed_artifact(
        model, root / "sub.zip", rows, root, Batching(batch_size=batch_size), HostSample(len(rows), seed=0)
    )

    host = embed_like_host(model, [root / r.path for r in rows])
    assert out.shape == host.shape == (len(rows), 8)
    np.testing.assert_allclose(out, host, atol=PARITY_TOLERANCE, rtol=0)
    assert check.images == len(rows) and check.max_abs_error <= PARITY_TOLERANCE and check.min_cosine > 0.99999


def test_a_tampered_artifact_is_refused_naming_the_file_and_image(images):
    root, rows = images
    model = exported(tiny_vit_embedder(), forward_offset=1e-4)
    with pytest.raises(
        GuieError, match=r"sub\.zip: the artifact called the host's way .* disagree on .*max \|difference\|"
    ):
        embed_artifact(model, root / "sub.zip", rows, root, Batching(batch_size=4), HostSample(3, seed=0))


def test_a_module_guie_did_not_export_is_refused(images):
    root, rows = images
    model = torch.jit.script(Probe())
    with pytest.raises(GuieError, match=r"other\.zip: not an artifact guie exported"):
        embed_artifact(model, root / "other.zip", rows, root, Batching(batch_size=4), HostSample(3, seed=0))


def test_the_host_sample_is_fixed_by_the_seed_and_spans_the_rows():
    picked = sample_positions(1000, 256, seed=3)
    assert picked == sample_positions(1000, 256, seed=3) != sample_positions(1000, 256, seed=4)
    assert len(set(picked)) == 256 and picked == sorted(picked) and picked[0] < 100 and picked[-1] > 900
    assert sample_positions(5, 256, seed=3) == [0, 1, 2, 3, 4]


def test_agreement_is_exact_on_the_cpu_in_float32_and_a_cosine_otherwise():
    rng = np.random.default_rng(0)
    host = rng.normal(size=(6, 8)).astype(np.float32)
    close = host + 5e-6
    off = host.copy()
    off[4] += 1e-3 * rng.normal(size=8)
    assert agreement(host, close).holds(exact=True)
    far = agreement(host, off)
    assert not far.holds(exact=True) and far.holds(exact=False) and far.worst(exact=True) == 4
    flipped = close.copy()
    flipped[3] *= -1
    assert agreement(host, flipped).worst(exact=False) == 3
    assert not agreement(host, -host).holds(exact=False)
    zero = np.zeros((2, 8), np.float32)
    assert agreement(zero, zero).min_cosine == 1.0 and not agreement(zero, zero + 1e-3).holds(exact=False)
    nan = close.copy()
    nan[2, 0] = np.nan
    assert not agreement(host, nan).holds(exact=True) and not agreement(host, nan).holds(exact=False)
    assert not agreement(host, host[:, :4]).holds(exact=False)  # a different width never agrees

    model = tiny_embedder()
    assert exact_arithmetic(model, torch.device("cpu"))
    assert not exact_arithmetic(model, torch.device("cuda"))  # another device rounds differently
    assert not exact_arithmetic(HalfPrecision(tiny_embedder()), torch.device("cpu"))
