"""benchmarks/real_towers.py's rows as slow tests: a random-init real tower + head + PCA exports a
float32 CPU artifact that `guie verify` passes, runs in torch 1.11 like in this torch, and fits in
the matrix's memory cap. The ViT-H-14 and SigLIP rows have their own slow tests
(test_export_vit_h.py, model/test_geometry.py, model/test_legacy_timm.py)."""

from __future__ import annotations

import sys

import pytest
from support import REPO
from torch111 import torch111_or_skip

sys.path.insert(0, str(REPO / "benchmarks"))
from real_towers import MAX_RSS_GIB, ROWS, measure  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("label", ["ViT-B-32 @224", "ViT-L-14-336 @336"])
def test_a_real_tower_row_exports_verifies_and_runs_in_torch111(label, tmp_path):
    torch111_or_skip()
    row = next(row for row in ROWS if row[0] == label)
    result = measure(row, "cpu", False, tmp_path)
    assert "error" not in result, result
    assert result["verify_passed"], result["failures"]
    assert result["archive_version"] <= 9 and result["parity"] <= 1e-5
    assert result["embedding_diff"] <= 1e-4 and result["pooled_rel_diff"] <= 1e-5
    assert result["tree_rss_gib"] < MAX_RSS_GIB and result["gflops"] > 0
