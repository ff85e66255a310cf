"""The plan: per pipeline stage, the work (images, epochs, FLOPs), the time it takes on a machine
(compute at a stated MFU, the loader at measured per-core rates, gradient all-reduce), the memory
per process, the disk, the bottleneck and the warnings. Pure arithmetic over the params, the image
counts, the tower's counted costs and the measured rates: nothing here touches a GPU or a clock.

The model of a training step (DDP): forward, then backward with the gradient all-reduce overlapped
(buckets go out as backward produces them), so a step takes forward + max(backward, all-reduce);
a ring all-reduce moves 2 (P-1)/P times the gradient bytes over each GPU's link. The loader runs
beside the step in `train.num_workers` worker processes per process (one core each), or in the
training process itself, adding to the step, when there are none."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guie.data.presets import DISK_GIB
from guie.params.data import SyntheticSource
from guie.plan.flops import TowerCost, activation_bytes, tower_cost
from guie.threads import NUMERICS_THREADS

if TYPE_CHECKING:
    from guie.params.load import Params
    from guie.params.train import StageParams
    from guie.plan.counts import ImageCounts
    from guie.plan.machines import Machine
    from guie.plan.probe import LoaderRates, Measured

FLOAT = 4  # bytes: weights, gradients and features are float32 (autocast computes in half, stores float32)
HALF = 2
ROW_BYTES = 700  # one manifest row as a Python object (8 short strings and ints in a dataclass)
WARN_SECONDS = 60.0  # a bottleneck that costs less than this is not worth a warning
DISK_BYTES_S = 0.5e9  # checkpoint and archive writes (an assumption: a local SSD, fsynced)
VERIFY_CALLS = 12  # guie verify's host calls: six odd inputs, each twice (the repeat check)
EXPORT_CALLS = 4  # export's parity checks of the scripted model against the eager one
MAX_SUGGESTED_BATCH = 1024  # per process: past this, a batch that hides the all-reduce is no advice


@dataclass(frozen=True)
class StageRow:
    stage: str
    images: int | None = None  # images through the tower (training views, cached views, embedded)
    epochs: str = ""
    flops: float | None = None
    compute_s: float | None = None
    loader_s: float | None = None
    comm_s: float | None = None
    batch: int | None = None  # per process
    grad_bytes: float | None = None  # gradient bytes each step all-reduces
    host_bytes: float | None = None  # host RAM per process
    gpu_bytes: float | None = None  # device memory per process
    disk_bytes: float | None = None  # what the stage adds to the disk (caches it deletes included)
    bound: str = ""
    wall_s: float | None = None  # None: not estimated (network)
    startup_s: float = 0.0  # the stage's interpreter start (part of wall_s)
    store_s: float = 0.0  # building the prepared store (part of wall_s)
    views: int = 0  # a training stage's training views (epochs x images, every run)

    @property
    def images_per_s(self) -> float | None:
        """Training views per second of the stage's work (its interpreter start and store build left out)."""
        if not self.views or self.wall_s is None:
            return None
        return self.views / (self.wall_s - self.store_s - self.startup_s)


@dataclass
class Plan:
    machine: Machine
    mfu: float
    processes: int
    rows: list[StageRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.rows if r.wall_s is not None)

    @property
    def disk_bytes(self) -> float:
        return sum(r.disk_bytes for r in self.rows if r.disk_bytes is not None)

    @property
    def gpu_bytes(self) -> float:
        return max((r.gpu_bytes for r in self.rows if r.gpu_bytes is not None), default=0.0)

    def totals(self) -> str:
        unknown = [r.stage for r in self.rows if r.wall_s is None]
        text = (
            f"total: {duration(self.wall_s)} wall, {gib(self.disk_bytes)} of disk, "
            f"{gib(self.gpu_bytes)} {'memory' if self.machine.on_cpu else 'GPU memory'} per process at most"
        )
        return text + (f" (not counting {', '.join(unknown)}: network)" if unknown else "")


def gib(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


@dataclass(frozen=True)
class _Context:
    params: Params
    machine: Machine
    counts: ImageCounts
    measured: Measured
    mfu: float
    processes: int

    @property
    def startup_s(self) -> float:
        return self.measured.startup_s

    @property
    def rates(self) -> dict[int, LoaderRates]:
        return self.measured.rates

    @property
    def rate(self) -> float:
        """FLOP/s a training process reaches."""
        return self.machine.peak_flops * self.mfu

    @property
    def fp32_rate(self) -> float:
        return self.machine.fp32_flops * self.mfu

    @property
    def half(self) -> bool:
        return self.machine.precision in ("bf16", "fp16")

    def loader_cores(self, processes: int) -> tuple[float, bool]:
        """(cores feeding the loader, whether it runs beside the compute)."""
        workers = self.params.train.num_workers
        if not workers:
            return float(processes), False
        spare = self.machine.cpus - (NUMERICS_THREADS * processes if self.machine.on_cpu else 0)
        return float(max(1, min(workers * processes, spare))), True


def geometries(params: Params) -> dict[str, tuple[int, int]]:
    """Each training stage's (image size, patch stride), inherited along `from:`."""
    out: dict[str, tuple[int, int]] = {}
    for name, stage in params.train.stages.items():
        size, stride = out.get(stage.from_, (params.preprocess.image_size, params.model.patch_stride))
        out[name] = (stage.image_size or size, stride if stage.patch_stride is None else stage.patch_stride)
    return out


def _first_trained_block(stage: StageParams) -> int | None:
    if stage.tower == "all":
        return 0
    return stage.unfreeze_from if stage.tower == "blocks" else None


def _head_params(cost: TowerCost, params: Params, classes: int, stage: StageParams) -> int:
    """Head (BatchNorm, Linear) and margin head (one row per class and sub-centre)."""
    head_dim = params.model.head_dim
    return 2 * cost.dim + cost.dim * head_dim + head_dim + head_dim * classes * stage.loss.subcenters


@dataclass(frozen=True)
class _Stage:
    """What a training stage works on, per run."""

    name: str
    stage: StageParams
    geometry: tuple[int, int]
    cost: TowerCost
    images: int  # training images
    held: int
    sel: int
    batch: int  # per process
    steps: int  # per epoch
    runs: int  # soup ingredients, else 1
    first: int | None  # the first trained block (None: the tower is frozen)
    head_params: int
    trained: int  # parameters the optimizer updates

    @property
    def views(self) -> int:
        """Training views of one run."""
        return self.stage.epochs * self.steps * self.batch


def _stage_facts(ctx: _Context, name: str, stage: StageParams, geometry: tuple[int, int]) -> _Stage:
    p, P = ctx.params, ctx.processes
    cost = tower_cost(p.model.name, *geometry)
    n, classes = ctx.counts.train_images(stage.sources), ctx.counts.train_classes(stage.sources)
    B = p.train.batch_size
    first = _first_trained_block(stage)
    head_params = _head_params(cost, p, classes, stage)
    trained = (cost.trained_params(first) if first is not None else 0) + (head_params if stage.head_trains else 0)
    return _Stage(
        name,
        stage,
        geometry,
        cost,
        n,
        ctx.counts.heldout,
        ctx.counts.selection,
        max(1, B // P),
        max(1, n // B),
        len(stage.soup.ingredients) if stage.soup else 1,
        first,
        head_params,
        trained,
    )


def _comm_step(ctx: _Context, f: _Stage) -> tuple[float, float]:
    """(gradient bytes a step all-reduces, seconds it takes): a ring moves 2 (P-1)/P of them per link."""
    P = ctx.processes
    if P == 1 or not f.trained:
        return 0.0, 0.0
    step_bytes = f.trained * FLOAT
    return step_bytes, 2 * (P - 1) / P * step_bytes / ctx.machine.link_bytes_s


def _train_row(ctx: _Context, f: _Stage, new_store: bool) -> StageRow:
    p, P, cost, stage = ctx.params, ctx.processes, f.cost, f.stage
    head_flops = 2 * f.head_params  # per image, forward (the margin head's product with every class row)
    views = f.views * P  # global views per run
    if f.first is not None:  # the tower trains: every view through it, backward through the trained part
        tower_images, monitor_images = views, (stage.epochs + 1) * f.held
        bwd_flops = views * 2 * (cost.trained_forward_flops(f.first) + head_flops)
    else:
        tower_images = stage.cached_views * f.images if stage.cached_views else views
        monitor_images = f.held  # a frozen tower's held-out features are embedded once
        bwd_flops = views * 2 * head_flops if stage.head_trains else 0
    fwd_s = (tower_images * cost.forward_flops + views * head_flops) / P / ctx.rate
    bwd_s = bwd_flops / P / ctx.rate
    step_bytes, comm_step = _comm_step(ctx, f)
    comm_s = stage.epochs * f.steps * comm_step
    # soups and WiSE-FT score states on the selection / held-out images (re-embedded when the tower trains)
    embed_images = monitor_images * f.runs + _scoring_images(stage, f.held, f.sel, f.runs, f.first is not None)
    embed_s = embed_images * cost.forward_flops / P / ctx.rate
    compute_s = f.runs * (fwd_s + max(bwd_s, comm_s)) + embed_s
    flops = f.runs * (tower_images * cost.forward_flops + bwd_flops) + embed_images * cost.forward_flops
    rates = ctx.rates[f.geometry[0]]
    view_rate = rates.views_store if p.train.prepared_store else rates.views_decode
    cores, beside = ctx.loader_cores(P)
    loader_s = (f.runs * tower_images / view_rate + embed_images / rates.views_store) / cores
    store_s = _store_images(p, f) / (rates.prepare * ctx.machine.cpus) if new_store else 0.0
    work_s = max(compute_s, loader_s) if beside else compute_s + loader_s
    # the largest part: the FLOPs' own time, the all-reduce's, the loader's, the store's build, the start
    parts = {"compute": f.runs * (fwd_s + bwd_s) + embed_s, "all-reduce": f.runs * comm_s, "loader": loader_s}
    parts["store build"], parts["startup"] = store_s, ctx.startup_s
    epochs = f"{stage.epochs}" + (f" x{f.runs} runs" if f.runs > 1 else "")
    if f.first is None and stage.cached_views:
        epochs += f", {stage.cached_views} cached view{'s' if stage.cached_views > 1 else ''}"
    host, gpu, disk = _train_memory(ctx, f, new_store)
    return StageRow(
        f"train@{f.name}",
        tower_images * f.runs + embed_images,
        epochs,
        flops,
        compute_s,
        loader_s,
        f.runs * comm_s if P > 1 else None,
        f.batch,
        step_bytes if P > 1 else None,
        host,
        gpu,
        disk,
        max(parts, key=parts.get),
        ctx.startup_s + store_s + work_s,
        ctx.startup_s,
        store_s,
        views * f.runs,
    )


def _store_images(p: Params, f: _Stage) -> int:
    """Images the prepared store holds for the stage (0 without one): training, held-out, selection."""
    if not p.train.prepared_store:
        return 0
    return f.images + f.held + (f.sel if f.stage.soup or f.stage.wise_ft else 0)


def _activations(ctx: _Context, f: _Stage) -> float:
    """Activation bytes per process: saved for backward per image, halved under autocast."""
    per_image = activation_bytes(ctx.params.model.name, *f.geometry, f.first) * (0.5 if ctx.half else 1.0)
    return f.batch * per_image


def _train_memory(ctx: _Context, f: _Stage, new_store: bool) -> tuple[float, float, float]:
    """(host RAM, device memory, disk) of a training stage, per process, as the code holds them."""
    cost, stage = f.cost, f.stage
    optimizer_state = {"adamw": 2 * FLOAT, "sgd": FLOAT}[stage.optimizer]
    gpu = cost.params * FLOAT + (cost.params * HALF if ctx.half else 0)  # weights + autocast's half copies
    gpu += f.trained * (FLOAT + optimizer_state) + (f.head_params * FLOAT if not stage.head_trains else 0)
    gpu += _activations(ctx, f)
    cached = f.first is None and stage.cached_views
    cache_bytes = stage.cached_views * f.images * cost.dim * FLOAT if cached else 0
    rows_bytes = (f.images + f.held + f.sel + ctx.counts.pca) * ROW_BYTES
    model_bytes = (cost.params + f.head_params) * FLOAT
    # a soup is averaged on one process a tensor at a time from mapped runs: the average and one float64
    # tensor (1.4x the float32 model, tests/training/test_soup.py), counted on every process as the bound
    soup_bytes = model_bytes * 1.5 if stage.soup else 0
    # the input checkpoint and the model built from it, the process's share of the memory-mapped view
    # cache (one copy per node in the page cache), the held-out features, the manifest's rows, a soup
    host = 2 * model_bytes + cache_bytes / ctx.processes + f.held * cost.dim * FLOAT + rows_bytes + soup_bytes
    # the feature cache, the stage's model, soup ingredients, the resume checkpoint, the new store
    disk = cache_bytes + model_bytes * (1 + (f.runs if stage.soup else 0))
    disk += (cost.params if f.first is not None else 0) * FLOAT + f.head_params * FLOAT + f.trained * optimizer_state
    if new_store:
        disk += _store_images(ctx.params, f) * 3 * f.geometry[0] ** 2
    return host, gpu, disk


def _scoring_images(stage: StageParams, held: int, sel: int, runs: int, tower_trains: bool) -> int:
    """Images embedded to score soups and WiSE-FT's coefficients (once each when the tower is frozen)."""
    states_sel = 0
    if stage.soup is not None and stage.soup.method == "greedy":
        states_sel += 2 * runs - 1  # each ingredient, then each candidate soup
    if stage.wise_ft:
        states_sel += len(stage.wise_ft)
    states_held = (1 if stage.soup else 0) + (1 if stage.wise_ft else 0)
    if not tower_trains:
        return (sel if states_sel else 0) + (held if states_held else 0)
    return states_sel * sel + states_held * held


def _warnings(ctx: _Context, f: _Stage, row: StageRow) -> list[str]:
    return [*_comm_warning(ctx, f, row), *_loader_warning(ctx, f, row), *_memory_warning(ctx, f, row)]


def _comm_warning(ctx: _Context, f: _Stage, row: StageRow) -> list[str]:
    """Communication-bound: the all-reduce outlasts the backward that hides it, by a minute or more."""
    p, m, P, stage = ctx.params, ctx.machine, ctx.processes, f.stage
    step_bytes, comm_step = _comm_step(ctx, f)
    if not comm_step:
        return []
    bwd_image = (2 * f.cost.trained_forward_flops(f.first) if f.first is not None else 0) / ctx.rate
    hidden = f.batch * bwd_image
    if comm_step <= hidden or (comm_step - hidden) * stage.epochs * f.steps * f.runs < WARN_SECONDS:
        return []
    need = math.ceil(comm_step / bwd_image) if bwd_image else 0
    where = f"at {f.batch} image(s) per process (train.batch_size {p.train.batch_size} over {P} processes)"
    if not need or need > MAX_SUGGESTED_BATCH:  # the head's backward alone: no batch hides the all-reduce
        total = comm_step * stage.epochs * f.steps * f.runs
        whose = "the head's " if f.first is None else ""
        return [
            f"train@{f.name} is communication-bound: each step all-reduces {gib(step_bytes)} of {whose}gradients "
            f"({comm_step * 1e3:.1f} ms over {m.kind}'s link) {where}, with too little backward to hide it "
            f"behind; a larger train.batch_size takes fewer steps ({duration(total)} of all-reduce now)"
        ]
    scale = need * P / p.train.batch_size
    lrs = [f"lr_backbone {stage.lr_backbone * scale:.3g}"]
    lrs += [f"lr_head {stage.lr_head * scale:.3g}"] if stage.head_trains else []
    text = (
        f"train@{f.name} is communication-bound: each step all-reduces {gib(step_bytes)} of gradients "
        f"({comm_step * 1e3:.1f} ms over {m.kind}'s link) behind {hidden * 1e3:.1f} ms of backward {where}; "
        f"train.batch_size >= {need * P} ({need} per process) hides it, and by the linear scaling rule implies "
        f"train.stages.{f.name}.{' and '.join(lrs)} (x{scale:.3g})"
    )
    return [text]


def _loader_warning(ctx: _Context, f: _Stage, row: StageRow) -> list[str]:
    """Loader-bound: loading outlasts the compute beside it by a minute or more."""
    p, m = ctx.params, ctx.machine
    compute = row.compute_s or 0.0
    if not row.loader_s or row.loader_s <= compute or row.loader_s - compute < WARN_SECONDS:
        return []
    cores, _ = ctx.loader_cores(ctx.processes)
    need = math.ceil(cores * row.loader_s / max(compute, 1e-9))
    fix = (
        f"raise train.num_workers (the loader has {cores:g} core(s); ~{need} would keep up)"
        if need <= m.cpus
        else f"this machine's {m.cpus} cores cannot keep up (~{need} needed)"
    )
    if not p.train.prepared_store:
        fix += "; train.prepared_store: true decodes each image once instead of every epoch"
    return [
        f"train@{f.name} is loader-bound: {duration(row.loader_s)} of loading against {duration(compute)} of "
        f"compute; {fix}"
    ]


def _memory_warning(ctx: _Context, f: _Stage, row: StageRow) -> list[str]:
    m = ctx.machine
    if not row.gpu_bytes or row.gpu_bytes <= m.memory_bytes:
        return []
    text = (
        f"train@{f.name} is out of memory: ~{gib(row.gpu_bytes)} per process against the {m.kind}'s "
        f"{gib(m.memory_bytes)} of {'RAM' if m.on_cpu else 'GPU memory'} (activations {gib(_activations(ctx, f))} "
        f"at {f.batch} per process); lower train.batch_size or raise train.processes"
    )
    if f.first is not None:
        text += f", or train fewer blocks (train.stages.{f.name}.unfreeze_from)"
    return [text + ", or pick a GPU with more memory"]


def _embed_row(ctx: _Context, stage: str, images: int, cost: TowerCost, half: bool, extra_calls: int = 0) -> StageRow:
    """A stage that embeds `images` in batches on one device (pca, evaluate), decoding each."""
    rate = ctx.rate if half else ctx.fp32_rate
    flops = (images + extra_calls) * cost.forward_flops
    compute_s = flops / rate
    rates = ctx.rates[cost.image_size]
    cores, beside = ctx.loader_cores(1)
    loader_s = (images + extra_calls) / rates.prepare / cores
    work = max(compute_s, loader_s) if beside else compute_s + loader_s
    gpu = cost.params * (HALF if half else FLOAT) + ctx.params.pca.batch_size * cost.dim * FLOAT
    bound = max({"compute": compute_s, "loader": loader_s, "startup": ctx.startup_s}.items(), key=lambda kv: kv[1])[0]
    host = images * (cost.dim + ctx.params.model.head_dim) * FLOAT + 2 * cost.params * FLOAT
    return StageRow(
        stage,
        images,
        "",
        flops,
        compute_s,
        loader_s,
        None,
        ctx.params.pca.batch_size,
        None,
        host,
        gpu,
        None,
        bound,
        ctx.startup_s + work,
    )


def build_plan(
    params: Params,
    machine: Machine,
    counts: ImageCounts,
    measured: Measured,
    mfu: float,
) -> Plan:
    """Every stage of `dvc repro` for `params` on `machine`, from this machine's measurements (the
    loader's per-core rates at each training image size and preprocess.image_size, start-up times)."""
    processes = machine.gpus if not machine.on_cpu else params.train.processes
    plan = Plan(machine, mfu, processes)
    ctx = _Context(params, machine, counts, measured, mfu, processes)
    startup_s, light_s, rates = measured.startup_s, measured.light_startup_s, measured.rates
    p = params
    final_geometry = geometries(p)[p.train.final]
    final = tower_cost(p.model.name, *final_geometry)
    base = tower_cost(p.model.name, p.preprocess.image_size, p.model.patch_stride)
    raw = sum(DISK_GIB.get(s.name, 0) for s in p.data.sources) * 2**30
    synthetic = all(isinstance(s, SyntheticSource) for s in p.data.sources)
    generate = light_s + measured.generate_s if synthetic and measured.generate_s is not None else None
    plan.rows.append(
        StageRow("download", disk_bytes=raw or None, bound="generate" if synthetic else "network", wall_s=generate)
    )
    weights_bytes = base.params * FLOAT
    plan.rows.append(
        StageRow(
            "weights",
            disk_bytes=weights_bytes,
            host_bytes=2 * weights_bytes,
            bound="startup" if not p.model.pretrained else "network",
            wall_s=startup_s + weights_bytes / DISK_BYTES_S if not p.model.pretrained else None,
        )
    )
    all_images = counts.train_images() + counts.heldout + counts.selection + counts.pca
    manifest_s = all_images / (rates[p.preprocess.image_size].prepare * machine.cpus)
    plan.rows.append(
        StageRow(
            "manifest",
            all_images,
            "",
            host_bytes=all_images * ROW_BYTES,
            disk_bytes=all_images * 200,
            bound="decode" if manifest_s > light_s else "startup",
            wall_s=light_s + manifest_s,
        )
    )
    built: set[int] = set()
    for name, stage in p.train.stages.items():
        facts = _stage_facts(ctx, name, stage, geometries(p)[name])
        row = _train_row(ctx, facts, facts.geometry[0] not in built)
        built.add(facts.geometry[0])
        plan.rows.append(row)
        plan.warnings += _warnings(ctx, facts, row)
    tta = 2 if p.export.flip_tta else 1
    plan.rows.append(_embed_row(ctx, "pca", counts.pca * tta, final, half=False))
    export_half = p.export.half
    export_bytes = final.params * (HALF if export_half else FLOAT)
    export_s = startup_s + EXPORT_CALLS * final.forward_flops / ctx.fp32_rate + 2 * export_bytes / DISK_BYTES_S
    plan.rows.append(
        StageRow(
            "export",
            EXPORT_CALLS,
            "",
            EXPORT_CALLS * final.forward_flops,
            bound="startup",
            gpu_bytes=final.params * FLOAT * 2,
            host_bytes=3 * final.params * FLOAT,
            disk_bytes=export_bytes,
            wall_s=export_s,
        )
    )
    # verify imports little itself; its fenced child imports torch and runs the host calls
    verify_s = (
        light_s + startup_s + VERIFY_CALLS * tta * final.forward_flops / ctx.fp32_rate + export_bytes / DISK_BYTES_S
    )
    plan.rows.append(
        StageRow(
            "verify",
            VERIFY_CALLS,
            "",
            VERIFY_CALLS * tta * final.forward_flops,
            bound="startup",
            host_bytes=2 * export_bytes,
            wall_s=verify_s,
        )
    )
    index = counts.heldout + counts.pca  # queries + the index: the rest of the held-out classes and the PCA set
    evaluate_images = tta * (index + counts.pca + index)  # the artifact's, then the zero-shot fit and embedding
    plan.rows.append(
        _embed_row(
            ctx,
            "evaluate",
            evaluate_images,
            final,
            half=export_half,
            extra_calls=tta * min(p.evaluate.artifact_sample, index),
        )
    )
    if processes != p.train.processes and not machine.on_cpu:
        plan.notes.append(
            f"training runs as {processes} processes, one per GPU (params say train.processes {p.train.processes}: "
            f"`dvc exp run -S train.processes={processes}`)"
        )
    if p.train.batch_size % processes:
        plan.warnings.append(
            f"train.batch_size {p.train.batch_size} does not divide into {processes} processes: make it a multiple"
        )
    for row in plan.rows:
        if row.host_bytes and machine.on_cpu and row.host_bytes > machine.memory_bytes:
            plan.warnings.append(
                f"{row.stage} is out of memory: ~{gib(row.host_bytes)} of {gib(machine.memory_bytes)} RAM"
            )
    return plan
