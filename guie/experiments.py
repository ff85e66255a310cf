"""`guie metrics`: the workspace, its commit and every DVC experiment on it, one line each, in a
table that fits a terminal (100 columns): held-out mP@5 with its standard error, the zero-shot
baseline, each training stage's held-out mP@5, and the params that differ between the rows.

`dvc exp show` prints every param and metric (~440 columns for the default); this reads its JSON
(`dvc exp show --json`) and keeps what compares runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guie.errors import GuieError
from guie.layout import Layout

EVALUATE = Layout(Path(".")).evaluate_report.as_posix()  # as `dvc exp show` names it, relative to the project
TRAIN_METRICS = re.compile(r"(?:^|/)train_(?P<stage>[^/]+)/metrics\.json$")
WIDTH = 100


@dataclass(frozen=True)
class Row:
    name: str  # "workspace", the commit (branch or short sha), or the experiment's name
    params: dict[str, Any]  # flattened: "train.stages.finetune.lr_backbone" -> 0.002
    metrics: dict[str, dict[str, Any]]  # metrics file -> its top-level values


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(data) if isinstance(data, list) else data}


def _row(entry: dict, name: str) -> Row:
    data = entry.get("data") or {}
    params: dict[str, Any] = {}
    for content in (data.get("params") or {}).values():
        params.update(_flatten((content or {}).get("data") or {}))
    metrics = {path: (content or {}).get("data") or {} for path, content in (data.get("metrics") or {}).items()}
    return Row(name, params, metrics)


def _name(*entries: dict) -> str:
    """An entry's name, else its rev (a commit's sha shortened)."""
    for entry in entries:
        if entry.get("name"):
            return str(entry["name"])
    rev = str(entries[-1].get("rev", ""))
    return rev[:7] if re.fullmatch(r"[0-9a-f]{40}", rev) else rev


def rows_from_exp_show(payload: list[dict]) -> list[Row]:
    """The rows of `dvc exp show --json`: each baseline (workspace, commit), then its experiments."""
    rows = []
    for baseline in payload:
        rows.append(_row(baseline, _name(baseline)))
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                rows.append(_row(rev, _name(exp, rev)))
    return rows


def _metric(row: Row, suffix: str, key: str) -> Any:
    for path, values in row.metrics.items():
        if path.endswith(suffix) and key in values:
            return values[key]
    return None


def _stages(rows: list[Row]) -> list[str]:
    """Training stages with a metrics file in any row, in their first row's order."""
    seen: dict[str, None] = {}
    for row in rows:
        for path in row.metrics:
            match = TRAIN_METRICS.search(path)
            if match:
                seen.setdefault(match.group("stage"))
    return list(seen)


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _short(name: str) -> str:
    return name.removeprefix("train.stages.")


def changed_params(rows: list[Row]) -> list[str]:
    """Params whose value differs between the rows (absent counts as a value), sorted."""
    names = sorted({name for row in rows for name in row.params})
    return [name for name in names if len({json.dumps(row.params.get(name), default=str) for row in rows}) > 1]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


LEGEND = "mP@5 ± se: held-out, of the zip; 0-shot: untrained tower + PCA; per stage: held-out mP@5 after it"


def summary_lines(rows: list[Row], width: int = WIDTH) -> list[str]:
    """A legend, the header and one line a row, each at most `width` characters (the `changed
    params` column takes what is left and is cut short first)."""
    stages = _stages(rows)
    changed = changed_params(rows)
    name_w = min(max([len("experiment"), *(len(r.name) for r in rows)]), 20)
    header = [("experiment", name_w), ("mP@5 ± se", 15), ("0-shot", 6)]
    header += [(s, max(len(s), 6)) for s in stages]
    fixed = sum(w for _, w in header) + len(header)  # one space after each column
    header.append(("changed params", max(width - fixed, 0)))

    def line(cells: list[str]) -> str:
        last = len(header) - 1
        parts = [
            _fit(c, w).ljust(w) if i in (0, last) else _fit(c, w).rjust(w)
            for i, (c, (_, w)) in enumerate(zip(cells, header, strict=True))
        ]
        return " ".join(parts).rstrip()[:width]

    out = [_fit(LEGEND, width), line([h for h, _ in header]), "-" * width]
    for row in rows:
        mp5, se = _metric(row, EVALUATE, "mp5"), _metric(row, EVALUATE, "mp5_se")
        cells = [row.name, f"{_number(mp5)} ± {_number(se)}" if mp5 is not None else "-"]
        cells.append(_number(_metric(row, EVALUATE, "mp5_zero_shot")))
        cells += [_number(_metric(row, f"train_{s}/metrics.json", "heldout_mp5")) for s in stages]
        knobs = " ".join(f"{_short(n)}={row.params.get(n, '-')}" for n in changed) or "-"
        fits = len(knobs) <= header[-1][1]
        out.append(line([*cells, knobs if fits else "(below)"]))
        if not fits:  # on lines of their own, whole
            out += textwrap.wrap(knobs, width, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)
    return out


def exp_show(root: Path) -> list[dict]:
    """`dvc exp show --json` in project `root` (local experiments only: nothing is fetched)."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "--no-fetch"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise GuieError(f"`dvc exp show` failed in {root}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout or "[]")
