"""`guie plan` end to end: count the images, measure this machine's loader and CPU rates, build the plan."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from guie.errors import GuieError
from guie.params.data import SyntheticSource
from guie.plan.counts import ImageCounts
from guie.plan.counts import counts as image_counts
from guie.plan.estimate import Plan, build_plan, geometries
from guie.plan.machines import CPU, DEFAULT_CPU_MFU, DEFAULT_MFU, Machine, cpu_machine, gpu_machine
from guie.plan.probe import (
    THREADS_NOTE,
    Measured,
    cpu_probe,
    generate_seconds,
    loader_rates,
    sample_paths,
    startup_seconds,
)
from guie.threads import NUMERICS_THREADS

if TYPE_CHECKING:
    from guie.layout import Layout
    from guie.params.load import Params

CPUS_PER_GPU = 12  # --cpus unset: a GPU node's usual cores (8 x H100 nodes: 96-112)
CPU_LINK_BYTES_S = 5e9  # gloo between processes of one machine (shared memory): an assumption, not measured


def make_plan(params: Params, layout: Layout, gpu: str, gpus: int, cpus: int | None, mfu: float | None) -> Plan:
    """The plan of `dvc repro` for `params` on `gpus` x `gpu` (or `cpu`) with `cpus` cores (default:
    this machine's for the CPU, CPUS_PER_GPU per GPU), measuring this machine (a few seconds)."""
    if mfu is not None and not 0 < mfu <= 1:
        raise GuieError(f"--mfu: {mfu:g} is not a share of the peak (0 < mfu <= 1)")
    if gpu != CPU:
        gpu_machine(gpu, gpus, cpus or 1)  # an unknown preset is refused before anything is measured
    counts = image_counts(params, layout.manifest)
    if gpu == CPU:
        machine = _cpu(params, cpus)
        mfu = DEFAULT_CPU_MFU if mfu is None else mfu
    else:
        machine = gpu_machine(gpu, gpus, cpus or CPUS_PER_GPU * gpus, params.train.precision)
        mfu = DEFAULT_MFU if mfu is None else mfu
    measured = measure(params, layout, counts)
    plan = build_plan(params, machine, counts, measured, mfu)
    rates = "; ".join(
        f"{size} px: decode+resize {r.prepare:.0f}/s, training view from the store {r.views_store:.0f}/s, "
        f"decoding {r.views_decode:.0f}/s"
        for size, r in sorted(measured.rates.items())
    )
    plan.notes += [
        machine.note,
        f"MFU {mfu:g} (--mfu): the share of that peak training and embedding reach",
        counts.describe,
        f"loader per core, measured here on {next(iter(measured.rates.values())).source}: {rates}",
        f"a stage's interpreter starts in {measured.startup_s:.1f} s here (guie's train stage imported: torch, "
        f"open_clip, DVCLive; {measured.light_startup_s:.1f} s for download, manifest and verify's parent)",
    ]
    return plan


def _cpu(params: Params, cpus: int | None) -> Machine:
    """This CPU as the device, its rate measured on the tower's first resblock."""
    geometry = (params.model.name, params.preprocess.image_size, params.model.patch_stride)
    probe = cpu_probe(*geometry, max(1, params.train.batch_size // params.train.processes))
    cores = cpus or probe.cores
    # the stages compute on NUMERICS_THREADS threads: fewer cores than that slow them in proportion
    flops = probe.flops * min(1.0, cores / NUMERICS_THREADS)
    return cpu_machine(
        cores,
        flops,
        probe.ram_bytes,
        CPU_LINK_BYTES_S,
        f"cpu: {flops / 1e9:.1f} GFLOP/s measured here ({params.model.name}'s first resblock, forward, "
        f"{probe.batch} image(s) a call, float32 on {THREADS_NOTE}), {probe.ram_bytes / 2**30:.0f} GiB RAM",
    )


def measure(params: Params, layout: Layout, counts: ImageCounts) -> Measured:
    """The loader's per-core rates at every training image size, the stages' start-up times, and the
    synthetic sources' generation (when every source is synthetic: their images are then the loader's
    sample until a manifest exists)."""
    sizes = {params.preprocess.image_size, *(size for size, _ in geometries(params).values())}
    synthetic = [s for s in params.data.sources if isinstance(s, SyntheticSource)]
    generate, made = None, None
    with tempfile.TemporaryDirectory() as tmp:
        if len(synthetic) == len(params.data.sources):
            generate, made = generate_seconds(synthetic, Path(tmp) / "synthetic")
        paths, source = sample_paths(layout.root, counts.sample, Path(tmp), made)
        rates = {
            size: loader_rates(paths, size, params.preprocess.resize, params.train.augment, source=source)
            for size in sorted(sizes)
        }
    # a computing stage's interpreter imports torch, open_clip, DVCLive and guie's modules (train's are the most)
    return Measured(rates, startup_seconds("guie.cli, guie.stages.train"), startup_seconds("guie.cli"), generate)
