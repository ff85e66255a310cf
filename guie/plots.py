"""The report's figures, written as PNGs whose bytes depend only on their inputs.

Charts use matplotlib's object API (a bare Figure renders with Agg and touches no pyplot state);
the retrieval grid is composed with PIL so its hit/miss borders are exact colours. PNG metadata
is left out, so neither the matplotlib version nor a date ends up in the bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from guie.atomic import write_bytes
from guie.errors import GuieError

HIT_COLOUR = (0, 158, 60)  # green: the index image shows the query's instance
MISS_COLOUR = (214, 39, 40)  # red
QUERY_COLOUR = (60, 60, 60)
BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (235, 235, 235)  # shows where a non-square image was letterboxed
BORDER = 4  # px of hit/miss outline around each thumbnail
GAP = 6  # px between cells
QUERY_GAP = 18  # extra space separating the query column from its results
HEADER = 24  # px of column titles above the grid
FOOTER = 30  # px of legend below the grid
MARGIN = 8
FONT_SIZE = 13

_ZERO_SHOT_COLOUR = "#9aa5b1"
_FINETUNED_COLOUR = "#1f77b4"


def _save_figure(fig: Figure, out_png: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    write_bytes(out_png, buffer.getvalue())


def _check_scores(name: str, scores: Mapping[str, float]) -> None:
    for key, value in scores.items():
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name}[{key!r}] = {value!r} is not an mP@5 between 0 and 1")


def plot_domain_bars(
    mp5_by_domain: Mapping[str, float],
    mp5_zero_shot_by_domain: Mapping[str, float],
    out_png: Path,
    *,
    overall: float | None = None,
    overall_zero_shot: float | None = None,
) -> None:
    """Grouped bars of mP@5 per domain, zero-shot baseline beside fine-tuned, in the dict's order.

    `overall` / `overall_zero_shot` (the mean over all queries, not over domains) add a last,
    separated group; give both or neither.
    """
    if set(mp5_by_domain) != set(mp5_zero_shot_by_domain):
        raise ValueError(
            "fine-tuned and zero-shot scores cover different domains: "
            f"{sorted(mp5_by_domain)} vs {sorted(mp5_zero_shot_by_domain)}"
        )
    if not mp5_by_domain:
        raise ValueError("no domain scores to plot")
    if (overall is None) != (overall_zero_shot is None):
        raise ValueError("give both overall and overall_zero_shot, or neither")
    labels = list(mp5_by_domain)
    finetuned = [mp5_by_domain[d] for d in labels]
    zero_shot = [mp5_zero_shot_by_domain[d] for d in labels]
    if overall is not None:
        labels.append("overall")
        finetuned.append(overall)
        zero_shot.append(overall_zero_shot)
    _check_scores("mP@5", dict(zip(labels, finetuned, strict=True)))
    _check_scores("zero-shot mP@5", dict(zip(labels, zero_shot, strict=True)))

    positions = np.arange(len(labels), dtype=float)
    if overall is not None:
        positions[-1] += 0.6  # set the overall group apart from the domains
    width = 0.38
    fig = Figure(figsize=(max(6.0, 0.85 * len(labels) + 2.0), 4.6))
    ax = fig.add_subplot()
    bars0 = ax.bar(
        positions - width / 2, zero_shot, width, label="zero-shot (frozen tower + PCA)", color=_ZERO_SHOT_COLOUR
    )
    bars1 = ax.bar(positions + width / 2, finetuned, width, label="fine-tuned", color=_FINETUNED_COLOUR)
    for bars in (bars0, bars1):
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    if overall is not None:
        ax.axvline(positions[-1] - 0.8, color="0.6", linewidth=0.8, linestyle="--")
    ax.set_xticks(positions, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("mP@5")
    ax.set_title("Held-out retrieval mP@5 by domain")
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save_figure(fig, out_png)


def plot_explained_variance(ratios: np.ndarray, out_png: Path, *, marked_components: int = 64) -> None:
    """Cumulative explained variance against the number of PCA components kept.

    `ratios` are the per-component explained-variance ratios (sklearn's `explained_variance_ratio_`);
    the value at `marked_components` (the embedding size) is called out when there are that many.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.ndim != 1 or ratios.size == 0:
        raise ValueError(f"ratios must be a non-empty 1-D array, got shape {ratios.shape}")
    if not np.all(np.isfinite(ratios)) or np.any(ratios < 0) or ratios.sum() > 1 + 1e-6:
        raise ValueError("ratios must be finite, non-negative and sum to at most 1 (explained-variance ratios)")
    cumulative = np.cumsum(ratios)
    components = np.arange(1, ratios.size + 1)

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(components, cumulative, color=_FINETUNED_COLOUR, linewidth=1.8, marker="." if ratios.size <= 32 else None)
    if marked_components <= ratios.size:
        kept = cumulative[marked_components - 1]
        ax.axvline(marked_components, color="0.4", linestyle="--", linewidth=0.8)
        ax.axhline(kept, color="0.4", linestyle="--", linewidth=0.8)
        ax.annotate(
            f"{marked_components} components: {kept:.1%}",
            (marked_components, kept),
            xytext=(8, -16),
            textcoords="offset points",
            fontsize=9,
        )
    ax.set_xlim(0.5, ratios.size + 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("principal components kept")
    ax.set_ylabel("explained variance (fraction)")
    ax.set_title("PCA: cumulative explained variance")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save_figure(fig, out_png)


def grid_cell_box(row: int, column: int, thumb: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a cell in the retrieval grid, outline included; column 0 is the query."""
    cell = thumb + 2 * BORDER
    left = MARGIN + column * (cell + GAP) + (QUERY_GAP if column > 0 else 0)
    top = MARGIN + HEADER + row * (cell + GAP)
    return left, top, left + cell, top + cell


def _thumbnail(path: Path, thumb: int) -> Image.Image:
    try:
        # Decoded as the host decodes: no EXIF orientation applied.
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        raise GuieError(
            f"{path}: cannot be read as an image for the retrieval grid ({err}); check the manifest"
        ) from err
    rgb = ImageOps.contain(rgb, (thumb, thumb), Image.Resampling.BICUBIC)
    cell = Image.new("RGB", (thumb, thumb), CELL_BACKGROUND)
    cell.paste(rgb, ((thumb - rgb.width) // 2, (thumb - rgb.height) // 2))
    return cell


def plot_retrieval_grid(
    rows: Sequence[tuple[Path, Sequence[tuple[Path, bool]]]], out_png: Path, thumb: int = 96
) -> None:
    """One row per query: the query image, then its ranked results outlined green (hit) or red (miss)."""
    if not rows:
        raise ValueError("no queries to draw in the retrieval grid")
    if thumb < 16:
        raise ValueError(f"thumb must be at least 16 px, got {thumb}")
    n_results = max(len(results) for _, results in rows)
    right, bottom = grid_cell_box(len(rows) - 1, n_results, thumb)[2:]
    canvas = Image.new("RGB", (max(right + MARGIN, 420), bottom + GAP + FOOTER), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)

    for column, title in enumerate(["query"] + [f"#{rank}" for rank in range(1, n_results + 1)]):
        left, top, cell_right, _ = grid_cell_box(0, column, thumb)
        draw.text(((left + cell_right) // 2, top - 6), title, fill=QUERY_COLOUR, font=font, anchor="mb")

    for row, (query, results) in enumerate(rows):
        cells = [(query, QUERY_COLOUR)] + [(path, HIT_COLOUR if hit else MISS_COLOUR) for path, hit in results]
        for column, (path, colour) in enumerate(cells):
            left, top, cell_right, cell_bottom = grid_cell_box(row, column, thumb)
            draw.rectangle((left, top, cell_right - 1, cell_bottom - 1), fill=colour)
            canvas.paste(_thumbnail(Path(path), thumb), (left + BORDER, top + BORDER))

    legend_y = bottom + GAP + FOOTER // 2
    x = MARGIN
    for colour, text in [(HIT_COLOUR, "hit: same instance as the query"), (MISS_COLOUR, "miss")]:
        draw.rectangle((x, legend_y - 7, x + 14, legend_y + 7), fill=colour)
        draw.text((x + 20, legend_y), text, fill=QUERY_COLOUR, font=font, anchor="lm")
        x += 20 + int(draw.textlength(text, font=font)) + 24

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=False)
    write_bytes(out_png, buffer.getvalue())
