import numpy as np
import pytest
from PIL import Image, ImageOps

from guie.errors import GuieError
from guie.plots import (
    BORDER,
    CELL_BACKGROUND,
    HIT_COLOUR,
    MISS_COLOUR,
    QUERY_COLOUR,
    grid_cell_box,
    plot_domain_bars,
    plot_explained_variance,
    plot_retrieval_grid,
)

DOMAINS = ["apparel", "artwork", "cars", "dishes", "landmark"]


def _open_png(path):
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def _solid(path, size, colour, mode="RGB"):
    Image.new(mode, size, colour).save(path)
    return path


def test_domain_bars_png_is_valid_deterministic_and_carries_no_metadata(tmp_path):
    finetuned = {d: 0.5 + 0.05 * i for i, d in enumerate(DOMAINS)}
    zero_shot = {d: 0.4 + 0.05 * i for i, d in enumerate(DOMAINS)}
    first, second = tmp_path / "a" / "bars.png", tmp_path / "b.png"
    plot_domain_bars(finetuned, zero_shot, first, overall=0.6, overall_zero_shot=0.5)
    plot_domain_bars(finetuned, zero_shot, second, overall=0.6, overall_zero_shot=0.5)
    image = _open_png(first)
    assert 600 <= image.width <= 1400 and 300 <= image.height <= 600
    assert "Software" not in image.info and not any("date" in key.lower() for key in image.info)
    assert first.read_bytes() == second.read_bytes()
    # The overall group is drawn: the chart differs from one without it.
    plot_domain_bars(finetuned, zero_shot, second)
    assert first.read_bytes() != second.read_bytes()


@pytest.mark.parametrize(
    ("zero_shot", "extra", "message"),
    [
        ({"apparel": 0.1}, {}, "different domains"),
        ({"apparel": 0.1, "cars": 0.2}, {"overall": 0.5}, "both overall and overall_zero_shot"),
        ({"apparel": 0.1, "cars": 1.5}, {}, "between 0 and 1"),
        ({"apparel": 0.1, "cars": float("nan")}, {}, "between 0 and 1"),
    ],
)
def test_domain_bars_refuse_inconsistent_scores(tmp_path, zero_shot, extra, message):
    with pytest.raises(ValueError, match=message):
        plot_domain_bars({"apparel": 0.3, "cars": 0.4}, zero_shot, tmp_path / "bars.png", **extra)
    assert not (tmp_path / "bars.png").exists()


def test_explained_variance_png_is_valid_and_deterministic(tmp_path):
    ratios = np.sort(np.random.default_rng(0).dirichlet(np.ones(256)))[::-1]
    plot_explained_variance(ratios, tmp_path / "a.png")
    plot_explained_variance(ratios, tmp_path / "b.png")
    image = _open_png(tmp_path / "a.png")
    assert 400 <= image.width <= 1000 and 300 <= image.height <= 700
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    plot_explained_variance(ratios, tmp_path / "c.png", marked_components=32)
    assert (tmp_path / "c.png").read_bytes() != (tmp_path / "a.png").read_bytes()


@pytest.mark.parametrize("ratios", [np.array([]), np.ones((2, 2)) / 4, np.array([0.7, 0.6]), np.array([0.5, -0.1])])
def test_explained_variance_refuses_bad_ratios(tmp_path, ratios):
    with pytest.raises(ValueError, match="ratios"):
        plot_explained_variance(ratios, tmp_path / "v.png")


@pytest.fixture
def grid_rows(tmp_path):
    query = _solid(tmp_path / "query.png", (50, 50), (0, 0, 255))
    grey = _solid(tmp_path / "grey.png", (40, 70), 128, mode="L")
    wide = _solid(tmp_path / "wide.jpg", (120, 60), (250, 200, 0))
    hits = [True, False, False, True, False]
    return [(query, [(grey if i % 2 else wide, hit) for i, hit in enumerate(hits)]), (wide, [(query, True)])]


def test_retrieval_grid_outlines_hits_green_and_misses_red(tmp_path, grid_rows):
    out = tmp_path / "grid.png"
    plot_retrieval_grid(grid_rows, out, thumb=64)
    image = _open_png(out).convert("RGB")
    for row, (_, results) in enumerate(grid_rows):
        cells = [QUERY_COLOUR] + [HIT_COLOUR if hit else MISS_COLOUR for _, hit in results]
        for column, colour in enumerate(cells):
            left, top, right, bottom = grid_cell_box(row, column, 64)
            middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
            for x, y in [(left + 1, middle_y), (right - 2, middle_y), (middle_x, top + 1), (middle_x, bottom - 2)]:
                assert image.getpixel((x, y)) == colour, (row, column, x, y)
    # Row 1 has one result: no outline where row 0 has its second result.
    left, top, _, _ = grid_cell_box(1, 2, 64)
    assert image.getpixel((left + 1, top + 1)) == (255, 255, 255)
    # Images sit inside the outline, letterboxed: the grey portrait image leaves side bands.
    left, top, right, bottom = grid_cell_box(0, 2, 64)
    assert image.getpixel(((left + right) // 2, (top + bottom) // 2)) == (128, 128, 128)
    assert image.getpixel((left + BORDER + 1, (top + bottom) // 2)) == CELL_BACKGROUND


def test_retrieval_grid_is_deterministic(tmp_path, grid_rows):
    plot_retrieval_grid(grid_rows, tmp_path / "a.png")
    plot_retrieval_grid(grid_rows, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_retrieval_grid_decodes_like_the_host_without_exif_rotation(tmp_path):
    wide = Image.new("RGB", (90, 30), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated = tmp_path / "rotated.png"
    wide.save(rotated, exif=exif)
    assert ImageOps.exif_transpose(Image.open(rotated)).size == (30, 90)  # the tag is really there

    plot_retrieval_grid([(rotated, [(rotated, True)])], tmp_path / "grid.png", thumb=60)
    image = Image.open(tmp_path / "grid.png").convert("RGB")
    left, top, right, bottom = grid_cell_box(0, 0, 60)
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    assert image.getpixel((middle_x, middle_y)) == (0, 0, 255)
    assert image.getpixel((left + BORDER + 2, middle_y)) == (0, 0, 255)  # still wide: fills the width
    assert image.getpixel((middle_x, top + BORDER + 2)) == CELL_BACKGROUND  # band above it


def test_retrieval_grid_names_an_unreadable_image(tmp_path):
    query = _solid(tmp_path / "query.png", (20, 20), (0, 0, 0))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(GuieError, match="broken.jpg"):
        plot_retrieval_grid([(query, [(broken, False)])], tmp_path / "grid.png")
    with pytest.raises(GuieError, match="missing.jpg"):
        plot_retrieval_grid([(query, [(tmp_path / "missing.jpg", False)])], tmp_path / "grid.png")
    assert not (tmp_path / "grid.png").exists()


def test_retrieval_grid_needs_rows(tmp_path):
    with pytest.raises(ValueError, match="no queries"):
        plot_retrieval_grid([], tmp_path / "grid.png")
