"""Helpers shared by tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_params_dict() -> dict:
    """The default params.yaml shrunk so every stage runs in seconds on a CPU."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    train_src, pca_src = raw["data"]["sources"]
    train_src.update(domains=["apparel", "cars", "toys"], instances_per_domain=8, views_per_instance=4, min_side=48, max_side=128)
    pca_src.update(domains=["apparel", "cars", "toys"], instances_per_domain=12, views_per_instance=2, min_side=48, max_side=128)
    raw["train"]["head"]["epochs"] = 1
    raw["train"]["finetune"]["epochs"] = 1
    raw["train"]["batch_size"] = 16
    raw["evaluate"]["bootstrap"] = 50
    return raw


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def nan_loss_at_call(monkeypatch, n: int) -> list:
    """Make the n-th training loss NaN (as a diverging run would); returns the growing list of calls."""
    import guie.train

    real, calls = guie.train.SubCenterArcFace.forward, []

    def forward(self, *args):
        calls.append(1)
        loss = real(self, *args)
        return loss * float("nan") if len(calls) == n else loss

    monkeypatch.setattr(guie.train.SubCenterArcFace, "forward", forward)
    return calls
