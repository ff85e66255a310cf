"""`guie plan` end to end: count the images, measure this machine's loader and CPU rates, build the plan."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from guie.errors import GuieError
from guie.plan.counts import counts as image_counts
from guie.plan.estimate import Plan, build_plan, geometries
from guie.plan.machines import CPU, DEFAULT_CPU_MFU, DEFAULT_MFU, cpu_machine, gpu_machine
from guie.plan.probe import THREADS_NOTE, cpu_probe, loader_rates, sample_paths, startup_seconds

if TYPE_CHECKING:
    from guie.layout import Layout
    from guie.params.load import Params

CPUS_PER_GPU = 12  # --cpus unset: a GPU node's usual cores (8 x H100 nodes: 96-112)
CPU_LINK_BYTES_S = 5e9  # gloo between processes of one machine (shared memory): an assumption, not measured


def make_plan(params: Params, layout: Layout, gpu: str, gpus: int, cpus: int | None, mfu: float | None) -> Plan:
    """The plan of `dvc repro` for `params` on `gpus` x `gpu` (or `cpu`) with `cpus` cores (default:
    this machine's), measuring this machine's loader on the manifest's images (a few seconds)."""
    if mfu is not None and not 0 < mfu <= 1:
        raise GuieError(f"--mfu: {mfu:g} is not a share of the peak (0 < mfu <= 1)")
    if gpu != CPU:
        gpu_machine(gpu, gpus, cpus or 1)  # an unknown preset is refused before anything is measured
    sizes = {params.preprocess.image_size, *(size for size, _ in geometries(params).values())}
    counts = image_counts(params, layout.manifest)
    if gpu == CPU:
        geometry = (params.model.name, params.preprocess.image_size, params.model.patch_stride)
        probe = cpu_probe(*geometry, max(1, params.train.batch_size // params.train.processes))
        cores = cpus or probe.cores
        mfu = DEFAULT_CPU_MFU if mfu is None else mfu
        # the stages compute on NUMERICS_THREADS threads: fewer cores than that slow them in proportion
        flops = probe.flops * min(1.0, cores / 2)
        machine = cpu_machine(
            cores,
            flops,
            probe.ram_bytes,
            CPU_LINK_BYTES_S,
            f"cpu: {flops / 1e9:.1f} GFLOP/s measured here ({params.model.name}'s first resblock, forward, "
            f"{probe.batch} image(s) a call, float32 on {THREADS_NOTE}), {probe.ram_bytes / 2**30:.0f} GiB RAM",
        )
        startup = probe.startup_s
    else:
        mfu = DEFAULT_MFU if mfu is None else mfu
        machine = gpu_machine(gpu, gpus, cpus or CPUS_PER_GPU * gpus, params.train.precision)
        startup = startup_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        paths, source = sample_paths(layout.root, counts.sample, Path(tmp))
        rates = {
            size: loader_rates(paths, size, params.preprocess.resize, params.train.augment, source=source)
            for size in sorted(sizes)
        }
    plan = build_plan(params, machine, counts, rates, startup, mfu)
    plan.notes += [
        machine.note,
        f"MFU {mfu:g} (--mfu): the share of that peak training and embedding reach",
        counts.describe,
        "loader per core, measured here on "
        + source
        + ": "
        + "; ".join(
            f"{size} px: decode+resize {r.prepare:.0f}/s, training view from the store {r.views_store:.0f}/s, "
            f"decoding {r.views_decode:.0f}/s"
            for size, r in sorted(rates.items())
        ),
        f"each stage starts an interpreter: {startup:.1f} s measured here (torch + open_clip import)",
    ]
    return plan
