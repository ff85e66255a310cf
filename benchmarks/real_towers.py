"""The real towers at their real size, random init (no weights needed): each row builds the tower at
its geometry + head + PCA, exports the float32 CPU artifact, and runs it in the scorer's torch 1.11.

Per row: archive format version and size, export seconds, peak RSS per phase (this process; the
verify phase also reports its child interpreters), FLOPs per host call and the scorer budget, and
max |torch 1.11 - this torch| on the embeddings (unit vectors) and on the tower's pooled features
relative to their norm. Each row runs in its own subprocess; a row whose processes together pass
MAX_RSS_GIB is killed and reported, the others go on. float16/CUDA rows run only where a GPU is
present and are "not measured" elsewhere. About an hour on 2 cores; not part of CI.

    python benchmarks/real_towers.py                      # every row; needs the torch 1.11 venv (tests/torch111.py)
    python benchmarks/real_towers.py --rows ViT-B-32      # rows whose label starts with this
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import psutil
import torch
from torch import nn

from guie.data.transforms import EvalPreprocess
from guie.model.backbone import register_model_configs, set_input_geometry, tower_dim, tower_mean_std
from guie.model.embedder import Embedder
from guie.model.head import build_head
from guie.model.legacy import legacy_tower
from guie.model.projection import fit_projection
from guie.stages.export import deployable, legacy_twin, parity_error, script, write_artifact
from guie.stages.verify import run_host_calls, verify_submission

REPO = Path(__file__).resolve().parent.parent
MAX_RSS_GIB = 20
# label, open_clip name, image size, patch stride (0 = the patch size)
ROWS = [
    ("ViT-B-32 @224", "ViT-B-32", 224, 0),
    ("ViT-L-14-336 @336", "ViT-L-14-336", 336, 0),
    ("ViT-H-14 @224", "ViT-H-14", 224, 0),
    ("ViT-H-14 @280", "ViT-H-14", 280, 0),
    ("ViT-H-14 @290 stride 12", "ViT-H-14", 290, 12),
    ("SO400M-SigLIP @224", "ViT-SO400M-14-SigLIP", 224, 0),
    ("SO400M-SigLIP-384 @384", "ViT-SO400M-14-SigLIP-384", 384, 0),
]


def peak_rss_gib(reset: bool = True) -> float:
    """This process's peak RSS since the last reset (VmHWM), then reset it (Linux clear_refs 5)."""
    status = Path("/proc/self/status").read_text()
    kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    return kib / 2**20


def build_row(name: str, side: int, stride: int) -> tuple[Embedder, nn.Module]:
    """The eager pipeline: random-init tower at its geometry, head, and a PCA fitted on random head
    features (the mechanics of PCA; no images go through ViT-H here)."""
    register_model_configs()
    torch.manual_seed(0)
    tower = open_clip.create_model(name).visual.eval()
    set_input_geometry(tower, name, side, stride)
    head = build_head(tower_dim(tower), 256, 0.2).eval()
    projection, _ = fit_projection(np.random.default_rng(0).standard_normal((512, 256)), 64, whiten=False, seed=0)
    preprocess = EvalPreprocess(side, "squash", *tower_mean_std(tower))
    return Embedder(preprocess, tower, head, projection).eval(), tower


def export_row(eager: Embedder, device: str, half: bool, zip_path: Path) -> dict:
    start = time.perf_counter()
    legacy = legacy_twin(eager)
    artifact = script(deployable(legacy, device, half))
    info = write_artifact(artifact, zip_path)
    seconds = time.perf_counter() - start
    parity = parity_error(eager, script(legacy) if (half or device != "cpu") else artifact, 0)
    return {"export_s": seconds, "parity": parity, "archive_version": info["archive_format_version"]} | {
        "size_gib": info["size"] / 2**30
    }


def verify_row(zip_path: Path, python111: Path | None) -> dict:
    report = verify_submission(zip_path, runtime=python111, estimate_time=True)
    checks = {c.name: c for c in report.checks}
    runtime = checks.get(f"runtime {python111}") if python111 else None
    budget = checks["scorer budget"].values
    timing = checks.get("scorer time")
    return {
        "verify_passed": report.passed,
        "failures": report.failures,
        "embedding_diff": runtime.values.get("max_abs_error") if runtime else None,
        "gflops": budget["flops_per_call"] / 1e9,
        "budget_h": budget["estimated_hours"],
        "s_per_image": timing.values.get("seconds_per_image") if timing and timing.values else None,
    }


def pooled_row(preprocess: nn.Module, tower: nn.Module, python111: Path | None, tmp: Path) -> dict:
    """The tower's pooled features (what the head sees) in both torches, relative to their norm."""
    if python111 is None:
        return {}
    path = tmp / "pooled.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(preprocess, legacy_tower(tower)).eval()), str(path))
    image = torch.randint(0, 256, (1, 3, 512, 512), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = run_host_calls(sys.executable, path, {"512x512": image}).outputs["512x512"]
    theirs = run_host_calls(python111, path, {"512x512": image}).outputs["512x512"]
    return {"pooled_rel_diff": float((theirs - ours).abs().max() / ours.norm())}


def run_row(name: str, side: int, stride: int, device: str, half: bool, out: Path) -> None:
    """One row, in this (child) process; writes its results as JSON to `out`."""
    warnings.simplefilter("ignore")  # torch 2.x deprecates TorchScript, which the scorer needs
    logging.disable(logging.WARNING)  # open_clip: "No pretrained weights loaded" (random init is the point)
    sys.path.insert(0, str(REPO / "tests"))
    from torch111 import torch111_python  # the scorer's torch: built by `python tests/torch111.py`

    python111 = torch111_python()
    peak_rss_gib()
    eager, tower = build_row(name, side, stride)
    result = {"build_rss_gib": peak_rss_gib()}
    result |= export_row(eager, device, half, out.with_suffix(".zip"))
    result["export_rss_gib"] = peak_rss_gib()
    result |= verify_row(out.with_suffix(".zip"), python111)
    result["verify_rss_gib"] = peak_rss_gib()
    result["children_rss_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    result |= pooled_row(eager.preprocess, tower, python111, out.parent)
    out.write_text(json.dumps(result))


def measure(row: tuple[str, str, int, int], device: str, half: bool, tmp: Path) -> dict:
    """Run one row of ROWS in a subprocess, killing it (and its children) when together they pass MAX_RSS_GIB."""
    label, name, side, stride = row
    out = tmp / f"{label.replace(' ', '_').replace('@', '')}.json"
    command = [sys.executable, __file__, "--row-child", name, str(side), str(stride), device, str(int(half)), str(out)]
    child = subprocess.Popen(command, cwd=REPO)
    process, worst = psutil.Process(child.pid), 0.0
    while child.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**30
        except psutil.Error:
            rss = 0.0
        worst = max(worst, rss)
        if rss > MAX_RSS_GIB:
            for p in [*process.children(recursive=True), process]:
                p.kill()
            child.wait()
            return {"error": f"killed: processes took {rss:.1f} GiB (> {MAX_RSS_GIB} GiB)"}
        time.sleep(0.5)
    if child.returncode != 0 or not out.is_file():
        return {"error": f"exit {child.returncode}"}
    return json.loads(out.read_text()) | {"tree_rss_gib": worst}


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="", help="only rows whose label starts with this")
    parser.add_argument("--cuda-only", action="store_true", help="on a GPU machine: only the CUDA float32/float16 rows")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    variants = ([] if args.cuda_only else [("cpu", False)]) + ([("cuda", False), ("cuda", True)] if gpu else [])
    header = (
        "| tower | artifact | archive | size GiB | export s | RSS build/export/verify GiB | GFLOPs/call "
        "| budget h | ms/call here | emb. 1.11 diff | pooled 1.11 diff (rel) | verify |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory(prefix="guie-real-towers-") as tmp:
        for row in ROWS:
            label = row[0]
            if not label.startswith(args.rows):
                continue
            for device, half in variants:
                kind = f"{device} {'float16' if half else 'float32'}"
                r = measure(row, device, half, Path(tmp))
                if "error" in r:
                    print(f"| {label} | {kind} | {r['error']} |" + " |" * 9)
                    continue
                rss = (
                    f"{r['build_rss_gib']:.1f} / {r['export_rss_gib']:.1f} / {r['verify_rss_gib']:.1f} "
                    f"(children {r['children_rss_gib']:.1f})"
                )
                ms = r["s_per_image"] * 1000 if r["s_per_image"] is not None else None
                verdict = "passed" if r["verify_passed"] else "; ".join(r["failures"])
                print(
                    f"| {label} | {kind} | v{r['archive_version']} | {r['size_gib']:.2f} | {r['export_s']:.0f} | {rss} "
                    f"| {r['gflops']:.0f} | {r['budget_h']:.1f} | {_cell(ms, '.0f')} "
                    f"| {_cell(r['embedding_diff'], '.1e')} | {_cell(r.get('pooled_rel_diff'), '.1e')} | {verdict} |",
                    flush=True,
                )
        if not gpu:
            print("| float16 / CUDA rows | not measured: no GPU on this machine |" + " |" * 10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--row-child":
        name, side, stride, device, half, out = sys.argv[2:8]
        run_row(name, int(side), int(stride), device, bool(int(half)), Path(out))
    else:
        main()
