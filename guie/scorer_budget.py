"""The scorer's time budget, estimated from compute: what one host call of an artifact costs in FLOPs,
scaled against a reported scoring run. Export records it in export.json and `guie verify` prints it.

It warns and never gates. The count is exact for what it counts; the hours are a proportional
estimate from one reference run whose GPU, precision and decoding share were not reported, and
the 1st-place ViT-H-14 at 290 px with stride 12 (2.3x the reference's FLOPs by this count, so
about 11 h by this estimate) was scored within the 9 h limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from guie.contract import SCORER_IMAGES, SCORER_LIMIT_S

if TYPE_CHECKING:
    import torch

# What is counted: FLOPs, two per multiply-add, of matrix products, convolutions and attention
# (torch.utils.flop_counter); elementwise ops, normalisation, softmax and the resize are not.
COUNTED = "FLOPs (2 per multiply-add) of matmuls, convolutions and attention, per host call"
COUNT_IMAGE_SIZE = (512, 512)  # the public sets' size; beyond the resize, a call's cost does not depend on it


def vit_flops(width: int, layers: int, mlp_ratio: float, tokens: int, patches: int, patch_inputs: int) -> int:
    """FLOPs of one ViT tower call, as COUNTED: per block Q/K/V/out projections (4 N w^2), the MLP
    (2 r N w^2) and attention's two products (2 N^2 w); the patch embedding (patches x 3 p^2 x w)."""
    block = tokens * width * width * (4 + 2 * mlp_ratio) + 2 * tokens * tokens * width
    return int(2 * (layers * block + patches * patch_inputs * width))


# The reference: a top GUIE team reported that scoring ViT-H-14 at 224 px took about 290 minutes of
# the 9 hours (quoted in guie's issue 13); their GPU, precision and decoding time were not reported.
# Its tower (width 1280, 32 blocks, MLP ratio 4, 14 px patches: a 16x16 grid + class token) as
# COUNTED; the head and projection after it add under 0.01%.
REFERENCE = "ViT-H-14 at 224 px, reported at ~290 min for the scoring run"
REFERENCE_FLOPS = vit_flops(1280, 32, 4.0, 16 * 16 + 1, 16 * 16, 3 * 14 * 14) + 2 * 1280 * 1024
REFERENCE_SECONDS = 290 * 60


@dataclass(frozen=True)
class ScorerBudget:
    flops_per_call: int
    estimated_hours: float  # REFERENCE_SECONDS scaled by flops_per_call / REFERENCE_FLOPS

    @property
    def over_limit(self) -> bool:
        return self.estimated_hours * 3600 > SCORER_LIMIT_S

    def describe(self) -> str:
        ratio = self.flops_per_call / REFERENCE_FLOPS
        text = (
            f"{self.flops_per_call / 1e9:.3g} GFLOPs per call ({COUNTED}), {ratio:.3g}x the reference "
            f"({REFERENCE}) -> about {self.estimated_hours:.2g} h for {SCORER_IMAGES:,} images if time scales with "
            f"compute on the reference's GPU (limit {SCORER_LIMIT_S / 3600:.0f} h)"
        )
        if self.over_limit:
            text += (
                "; above the limit by this estimate, which overstates large models (the host's decoding does not "
                "grow with them: the 1st place's ViT-H-14 at 290 px, stride 12, 2.3x the reference, was scored): "
                "time one scoring run on Kaggle before relying on it"
            )
        return text

    def as_dict(self) -> dict:
        return {
            "flops_per_call": self.flops_per_call,
            "counts": COUNTED,
            "reference": REFERENCE,
            "reference_flops": REFERENCE_FLOPS,
            "estimated_hours": round(self.estimated_hours, 3),
        }


def budget_for(flops_per_call: int) -> ScorerBudget:
    return ScorerBudget(flops_per_call, REFERENCE_SECONDS * flops_per_call / REFERENCE_FLOPS / 3600)


def count_flops(model: torch.nn.Module) -> int:
    """FLOPs, as COUNTED, of the host's call on one COUNT_IMAGE_SIZE uint8 image (scripted models too:
    the counter sees the ops TorchScript dispatches)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *COUNT_IMAGE_SIZE, dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())
