"""`evaluate`'s embedding of the artifact: batched (guie/embed.py: each image decoded and resized
alone, as the host's call resizes it, then tower, head and projection in batches, with its check of
`evaluate.artifact_sample` host calls) vs the baseline, one artifact call per image the host's way
(what `evaluate` did before). Same artifact, same images, same run: images/s of both, the ratio, and
the mP@5 each gives on the held-out task (they must be equal).

By default on the embedded default (params.yaml): its synthetic data and manifest and its tower
(guie-tiny-vit, seeded random init) with a seeded head and a PCA fitted on its PCA set, exported as
`guie export` does, in a temporary folder. `--root` takes an existing project instead (after
`dvc repro`): its manifest and its submission/submission.zip, i.e. the trained default's artifact.

    python benchmarks/embed_throughput.py
    python benchmarks/embed_throughput.py --root . --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from guie.contract import load_artifact
from guie.data.manifest import read_manifest
from guie.embed import Batching, artifact_embedder, embed_like_host, embed_rows
from guie.layout import Layout
from guie.model.backbone import load_tower, tower_dim
from guie.model.embedder import Embedder
from guie.model.head import build_head
from guie.model.projection import fit_projection
from guie.params.load import Params, load_params
from guie.retrieval_task import RetrievalTask, score
from guie.stages.evaluate import embed_submission, heldout_task
from guie.stages.export import deployable, legacy_twin, script, write_artifact

REPO = Path(__file__).resolve().parents[1]


def build_project(params: Params, layout: Layout) -> None:
    """The embedded default's data, manifest and tower, and an artifact of that tower exported as
    `guie export` does (legacy rewrite, scripted, zipped) with a seeded head and a fitted PCA."""
    from guie.data.transforms import build_eval_preprocess
    from guie.model.backbone import tower_mean_std
    from guie.stages.download import download_sources
    from guie.stages.manifest import build_manifest
    from guie.stages.weights import materialise_weights

    download_sources(params, layout.root, layout.raw, layout.downloads_dir)
    build_manifest(params, layout.root, layout.raw, layout.manifest, layout.rejected)
    materialise_weights(params.model, params.seed, layout.weights)
    tower = load_tower(params.model.name, layout.weights, params.preprocess.image_size, params.model.patch_stride)
    torch.manual_seed(params.seed)
    head = build_head(tower_dim(tower), params.model.head_dim, params.model.dropout)
    with torch.no_grad():  # a trained BN has non-trivial statistics
        head[0].running_mean.normal_(0.0, 0.1)
        head[0].running_var.uniform_(0.5, 2.0)
    preprocess = build_eval_preprocess(params.preprocess, *tower_mean_std(tower))
    embedder = Embedder(preprocess, tower.eval(), head.eval(), None, flip_tta=params.export.flip_tta).eval()
    pca_rows = [r for r in read_manifest(layout.manifest) if r.split == "pca"]
    features = embed_rows(
        embedder, pca_rows, layout.root, Batching(batch_size=params.pca.batch_size, description="PCA set")
    )
    embedder.projection, _ = fit_projection(features, params.pca.dims, params.pca.whiten, params.seed)
    write_artifact(script(deployable(legacy_twin(embedder), "cpu", half=False)), layout.submission)


def mp5(task: RetrievalTask, emb: np.ndarray, k: int) -> float:
    per_query, _ = score(task, emb[: len(task.queries)], emb[len(task.queries) :], k)
    return float(np.mean([per_query[q.path] for q in task.queries]))


def timed(fn: Callable[[], np.ndarray], rounds: int) -> tuple[np.ndarray, float]:
    """fn's output and its fastest of `rounds` runs, in seconds (the least disturbed by other load)."""
    best, out = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def run(params: Params, layout: Layout, rounds: int, workers: int | None) -> None:
    if workers is not None:  # a run knob: never changes an embedding
        params = replace(params, train=replace(params.train, num_workers=workers))
    rows = read_manifest(layout.manifest)
    task = heldout_task(params, rows, layout.manifest)
    ordered = task.queries + task.index
    paths = [layout.root / r.path for r in ordered]
    cpu = torch.device("cpu")
    print(
        f"{len(ordered)} images ({len(task.queries)} queries), model {params.model.name} at "
        f"{params.preprocess.image_size} px, {torch.get_num_threads()} torch threads, "
        f"batch {params.pca.batch_size}, {params.train.num_workers} loader workers, "
        f"host sample {min(params.evaluate.artifact_sample, len(ordered))}, torch {torch.__version__}"
    )
    model = load_artifact(layout.submission)
    embed_like_host(model, paths[:16], "warm-up")  # TorchScript's profiling executor optimises its first calls

    host, host_s = timed(lambda: embed_like_host(load_artifact(layout.submission), paths, "host calls"), rounds)
    batched, batched_s = timed(
        lambda: embed_submission(params, layout.root, layout.submission, ordered, cpu)[0], rounds
    )
    _, alone_s = timed(  # the batched part alone: what a run with a negligible sample would take
        lambda: embed_rows(
            artifact_embedder(load_artifact(layout.submission), layout.submission),
            ordered,
            layout.root,
            Batching(
                batch_size=params.pca.batch_size, num_workers=params.train.num_workers, description="batched alone"
            ),
        ),
        rounds,
    )
    k = params.evaluate.k
    host_mp5, batched_mp5 = mp5(task, host, k), mp5(task, batched, k)
    n = len(ordered)
    timings = (
        ("one artifact call per image (host's way)", host_s),
        ("evaluate's batched (+ its sample)", batched_s),
        ("  of which the batched pass alone", alone_s),
    )
    for name, seconds in timings:
        print(f"{name:<41}: {n / seconds:8.1f} images/s  ({seconds:.2f} s, best of {rounds})")
    print(f"ratio evaluate's batched / per-image     : {host_s / batched_s:8.2f}x")
    print(f"ratio batched pass alone / per-image     : {host_s / alone_s:8.2f}x")
    print(f"max |batched - host call| over all images: {float(np.abs(batched - host).max()):.2e}")
    print(
        f"mP@{k}: per-image {host_mp5:.6f}, batched {batched_mp5:.6f}: "
        + ("the same" if host_mp5 == batched_mp5 else "DIFFERENT")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help="parameters file")
    ap.add_argument("--root", type=Path, help="an existing project (manifest + submission zip); default: build one")
    ap.add_argument("--rounds", type=int, default=2, help="timed runs of each; the fastest counts")
    ap.add_argument("--workers", type=int, help="loader workers (default: train.num_workers)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    if args.root is not None:
        run(params, Layout(args.root.resolve()), args.rounds, args.workers)
        return
    with tempfile.TemporaryDirectory(prefix="guie-embed-bench-") as tmp:
        layout = Layout(Path(tmp))
        build_project(params, layout)
        run(params, layout, args.rounds, args.workers)


if __name__ == "__main__":
    main()
