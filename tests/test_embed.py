import io

import numpy as np
import pytest
import torch
from PIL import Image
from support import save_image_row, tiny_embedder
from torchvision.transforms import PILToTensor

from guie.embed import embed_like_host, embed_rows
from guie.model.embedder import Projection


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
    out = embed_rows(embedder, rows, root, batch_size)
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
