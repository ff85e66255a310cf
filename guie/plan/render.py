"""The plan as text: one table row per stage, then the totals, warnings and the assumptions."""

from __future__ import annotations

from guie.plan.estimate import Plan, StageRow, duration, gib

HEADERS = (
    "stage",
    "images",
    "epochs",
    "PFLOPs",
    "compute",
    "loader",
    "all-reduce",
    "batch/proc",
    "grads/step",
    "RAM/proc",
    "GPU mem/proc",
    "disk",
    "bound",
    "wall",
)


def _flops(f: float | None) -> str:
    if f is None:
        return "-"
    return f"{f / 1e15:.3g}" if f >= 1e12 else f"{f / 1e15:.1e}"


def _cells(row: StageRow) -> tuple[str, ...]:
    return (
        row.stage,
        "-" if row.images is None else f"{row.images:,}",
        row.epochs or "-",
        _flops(row.flops),
        duration(row.compute_s),
        duration(row.loader_s),
        duration(row.comm_s),
        "-" if row.batch is None else str(row.batch),
        gib(row.grad_bytes),
        gib(row.host_bytes),
        gib(row.gpu_bytes),
        gib(row.disk_bytes),
        row.bound or "-",
        duration(row.wall_s),
    )


def table_lines(plan: Plan) -> list[str]:
    headers = list(HEADERS)
    if plan.machine.on_cpu:
        headers[10] = "mem/proc"
    cells = [tuple(headers), *(_cells(r) for r in plan.rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            " | ".join(
                c.ljust(w) if i in (0, 2, 12) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return lines


def render(plan: Plan, title: str) -> list[str]:
    m = plan.machine
    where = f"{m.gpus} x {m.kind}" if not m.on_cpu else "the CPU"
    lines = [f"plan of {title} on {where}, {m.cpus} CPU cores, {plan.processes} training process(es)", ""]
    lines += table_lines(plan)
    lines += ["", plan.totals()]
    lines += [f"WARNING: {w}" for w in plan.warnings]
    lines += [f"note: {n}" for n in plan.notes]
    return lines


# the README's table: the per-process batch, gradient and host RAM columns left out
MARKDOWN = tuple(h for h in HEADERS if h not in ("batch/proc", "grads/step", "RAM/proc"))


def markdown_lines(plan: Plan) -> list[str]:
    """The table as Markdown, fewer columns (for a README)."""
    keep = [HEADERS.index(h) for h in MARKDOWN]
    rows = [[_cells(r)[i] for i in keep] for r in plan.rows]
    lines = ["| " + " | ".join(MARKDOWN) + " |", "|" + "---|" * len(MARKDOWN)]
    lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(row)) + " |" for row in rows]
    return [*lines, "", plan.totals() + "."] + [f"- {w}" for w in plan.warnings]
