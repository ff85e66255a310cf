"""`guie metrics`: runs side by side in 100 columns, from `dvc exp show --json`'s shape."""

from __future__ import annotations

from guie.experiments import changed_params, rows_from_exp_show, summary_lines

STAGES = ("head", "tower224", "tower280", "tower290", "products")  # the 1st place's chain: the widest preset


def _entry(rev: str, name: str | None, mp5: float, lr: float, extra: dict | None = None) -> dict:
    metrics = {
        f"metrics/train_{s}/metrics.json": {"data": {"heldout_mp5": 0.1 * i, "loss": 3.0, "step": 10}}
        for i, s in enumerate(STAGES)
    }
    metrics["metrics/evaluate/evaluate.json"] = {
        "data": {"mp5": mp5, "mp5_se": 0.0178, "mp5_zero_shot": 0.0167, "mp5_by_domain": {"cars": 0.5}}
    }
    params = {"seed": 0, "train": {"stages": {"tower224": {"lr_backbone": lr, "epochs": 2}}}, "data": {"sources": []}}
    params.update(extra or {})
    return {"rev": rev, "name": name, "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics}}


def payload() -> list[dict]:
    workspace = _entry("workspace", None, 0.0767, 0.001)
    commit = _entry("a" * 40, "main", 0.0767, 0.001)
    commit["experiments"] = [
        {"name": "lr-high", "revs": [_entry("b" * 40, "lr-high", 0.1234, 0.002)]},
        {"name": None, "revs": [_entry("c" * 40, None, 0.05, 0.003, {"seed": 7})]},
    ]
    return [workspace, commit]


def test_every_run_is_one_line_of_at_most_100_columns_with_its_metrics_and_changed_knobs():
    rows = rows_from_exp_show(payload())
    assert [r.name for r in rows] == ["workspace", "main", "lr-high", "ccccccc"]
    assert changed_params(rows) == ["seed", "train.stages.tower224.lr_backbone"]
    lines = summary_lines(rows)
    assert all(len(line) <= 100 for line in lines), "\n".join(lines)
    assert lines[0].startswith("mP@5 ± se: held-out")  # the legend
    assert lines[1].split()[:10] == ["experiment", "mP@5", "±", "se", "0-shot", *STAGES]
    assert lines[1].split()[-2:] == ["changed", "params"]
    [at] = [i for i, line in enumerate(lines) if line.startswith("lr-high ")]
    exp = lines[at]
    assert "0.1234 ± 0.0178" in exp and "0.0167" in exp and "0.4000" in exp.split("0.0167")[1]  # products mP@5
    # five stages leave too little room: the changed params follow on a line of their own, whole
    assert exp.endswith("(below)") and lines[at + 1] == "  seed=0 tower224.lr_backbone=0.002"
    [at] = [i for i, line in enumerate(lines) if line.startswith("ccccccc ")]
    assert lines[at + 1] == "  seed=7 tower224.lr_backbone=0.003"


def test_the_changed_params_stay_in_the_row_when_they_fit():
    two_stages = payload()
    for entry in [two_stages[0], two_stages[1], *(r for e in two_stages[1]["experiments"] for r in e["revs"])]:
        for stage in STAGES[2:]:
            del entry["data"]["metrics"][f"metrics/train_{stage}/metrics.json"]
    lines = summary_lines(rows_from_exp_show(two_stages))
    [exp] = [line for line in lines if line.startswith("lr-high ")]
    assert exp.endswith(" seed=0 tower224.lr_backbone=0.002") and len(exp) <= 100


def test_a_narrower_terminal_truncates_the_changed_params_not_the_metrics():
    lines = summary_lines(rows_from_exp_show(payload()), width=80)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    [exp] = [line for line in lines if line.startswith("lr-high ")]
    assert "0.1234 ± 0.0178" in exp


def test_a_run_without_metrics_shows_dashes():
    entry = {"rev": "workspace", "name": None, "data": {"params": {}, "metrics": {}}}
    lines = summary_lines(rows_from_exp_show([entry]))
    assert lines[3].split() == ["workspace", "-", "-", "-"]
