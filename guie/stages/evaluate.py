"""The `evaluate` stage: held-out retrieval mP@5 of the exported artifact next to the zero-shot
baseline (frozen tower + PCA), overall and per domain. The artifact's own preprocessing and weights
embed every image in batches (each image resized alone, as the host's call resizes it); on a seeded
sample of `evaluate.artifact_sample` images it is also called the host's way, one image per call,
and the stage fails unless the two agree within the export's parity promise."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from guie.atomic import write_text
from guie.contract import load_artifact
from guie.data.manifest import ManifestRow, read_manifest
from guie.data.transforms import build_eval_preprocess
from guie.embed import Agreement, Batching, HostSample, embed_artifact, embed_rows
from guie.errors import GuieError, require_inputs
from guie.metric import bootstrap_standard_error
from guie.model.backbone import load_tower, tower_mean_std
from guie.model.embedder import Embedder
from guie.model.projection import fit_projection
from guie.retrieval_task import RetrievalTask, build_task, score
from guie.runtime import resolve_device
from guie.threads import fixed_numerics

if TYPE_CHECKING:
    from guie.params.load import Params

GRID_QUERIES = 8


def _batching(params: Params, device: torch.device, description: str) -> Batching:
    """How evaluate embeds in batches: as the pca stage does."""
    return Batching(
        batch_size=params.pca.batch_size, num_workers=params.train.num_workers, device=device, description=description
    )


def zero_shot_embedder(
    params: Params, weights: Path, pca_rows: list[ManifestRow], project_root: Path, device: torch.device
) -> Embedder:
    """The baseline: the untrained tower's features, PCA-reduced on the same PCA set."""
    tower = load_tower(params.model.name, weights, params.preprocess.image_size, params.model.patch_stride).eval()
    mean, std = tower_mean_std(tower)
    preprocess = build_eval_preprocess(params.preprocess, mean, std)
    # the artifact's test-time augmentation, for a like-for-like baseline
    embedder = Embedder(preprocess, tower, None, None, flip_tta=params.export.flip_tta).eval()
    features = embed_rows(embedder, pca_rows, project_root, _batching(params, device, "zero-shot: PCA set"))
    embedder.projection, _ = fit_projection(
        features, params.pca.dims, params.pca.whiten, params.seed, "PCA set (zero-shot)"
    )
    return embedder


def summarise(
    task: RetrievalTask, per_query: dict[str, float], params: Params
) -> tuple[float, float, dict[str, float]]:
    scores = np.array([per_query[q.path] for q in task.queries])
    by_domain: dict[str, list[float]] = defaultdict(list)
    for q in task.queries:
        by_domain[q.domain].append(per_query[q.path])
    se = bootstrap_standard_error(scores, params.evaluate.bootstrap, params.seed)
    return float(scores.mean()), float(se), {d: float(np.mean(v)) for d, v in sorted(by_domain.items())}


def _domain_csv(finetuned: dict[str, float], zero_shot: dict[str, float], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["domain", "model", "mp5"])
    for d in sorted(finetuned):
        w.writerow([d, "zero_shot", f"{zero_shot[d]:.6f}"])
        w.writerow([d, "finetuned", f"{finetuned[d]:.6f}"])
    write_text(path, buf.getvalue())


def heldout_task(params: Params, rows: list[ManifestRow], manifest: Path) -> RetrievalTask:
    """The held-out retrieval task: held-out classes' queries against the rest of them and the PCA set."""
    heldout = [r for r in rows if r.split == "heldout"]
    pca_rows = [r for r in rows if r.split == "pca"]
    task = build_task(heldout, pca_rows, params.evaluate.queries_per_class)
    if not task.queries:
        raise GuieError(
            f"{manifest}: no held-out class has more than {params.evaluate.queries_per_class} images; "
            "raise data.manifest.heldout_fraction"
        )
    return task


def embed_submission(
    params: Params, project_root: Path, submission: Path, rows: list[ManifestRow], device: torch.device
) -> tuple[np.ndarray, Agreement]:
    """The artifact's embeddings of `rows`, batched on `device`, held to its host calls on a seeded sample."""
    return embed_artifact(
        load_artifact(submission),
        submission,
        rows,
        project_root,
        _batching(params, device, "evaluate: submission"),
        HostSample(params.evaluate.artifact_sample, params.seed),
    )


@dataclass(frozen=True, kw_only=True)
class EvaluatePaths:
    """Where the evaluate stage reads and writes."""

    project_root: Path  # the manifest's image paths are relative to it
    manifest: Path
    weights: Path  # the backbone's, for the zero-shot baseline
    submission: Path
    out_json: Path  # the metrics
    plots_dir: Path


@fixed_numerics
def run_evaluate(params: Params, paths: EvaluatePaths) -> dict:
    require_inputs("evaluate", (paths.manifest, "manifest"), (paths.submission, "export"))
    rows = read_manifest(paths.manifest)
    pca_rows = [r for r in rows if r.split == "pca"]
    task = heldout_task(params, rows, paths.manifest)
    k = params.evaluate.k
    ordered = task.queries + task.index

    device = resolve_device(params.pca.device, "pca.device")  # where both embed in batches; checked before any work
    emb, parity = embed_submission(params, paths.project_root, paths.submission, ordered, device)
    per_query, predictions = score(task, emb[: len(task.queries)], emb[len(task.queries) :], k)
    mp5, se, by_domain = summarise(task, per_query, params)

    baseline = zero_shot_embedder(params, paths.weights, pca_rows, paths.project_root, device)
    emb0 = embed_rows(baseline, ordered, paths.project_root, _batching(params, device, "evaluate: zero-shot"))
    per_query0, _ = score(task, emb0[: len(task.queries)], emb0[len(task.queries) :], k)
    mp5_0, se_0, by_domain_0 = summarise(task, per_query0, params)

    metrics = {
        "mp5": mp5,
        "mp5_se": se,
        "mp5_zero_shot": mp5_0,
        "mp5_zero_shot_se": se_0,
        "mp5_by_domain": by_domain,
        "mp5_zero_shot_by_domain": by_domain_0,
        "queries": len(task.queries),
        "index_size": len(task.index),
        "artifact_sample": parity.images,
        "artifact_sample_max_abs_error": parity.max_abs_error,
        "artifact_sample_min_cosine": parity.min_cosine,
    }
    write_text(paths.out_json, json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    from guie.plots import plot_domain_bars, plot_retrieval_grid

    _domain_csv(by_domain, by_domain_0, paths.plots_dir / "mp5_by_domain.csv")
    plot_domain_bars(
        by_domain, by_domain_0, paths.plots_dir / "mp5_by_domain.png", overall=mp5, overall_zero_shot=mp5_0
    )
    relevant = {q: set(v) for q, v in task.solution.items()}
    grid = [
        (paths.project_root / q.path, [(paths.project_root / p, p in relevant[q.path]) for p in predictions[q.path]])
        for q in task.queries[:: max(1, len(task.queries) // GRID_QUERIES)][:GRID_QUERIES]
    ]
    plot_retrieval_grid(grid, paths.plots_dir / "retrieval_grid.png")
    return metrics
