"""Weight-space ensembles (Wortsman et al. 2022).

Soups: one stage trained several times from the same start (seeds, augmentations), its runs'
weights averaged. Uniform: all of them. Greedy: best first on the selection split, then each
next-best run is added only if the soup's selection mP@5 does not drop.

WiSE-FT (robust fine-tuning, CVPR 2022): the weights interpolated between the stage's start and
its trained (or souped) weights, the mixing coefficient chosen on the selection split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from guie.torch_file import read_torch

# the parts of a stage checkpoint that are weights (the rest, definition and classes, is shared)
WEIGHT_PARTS = ("tower", "head", "margin")


def load_state(path: Path, remedy: str = "delete it and run the stage again") -> dict:
    """A run's checkpoint, memory-mapped: reading one entry (a run's summary) does not read a
    ViT-H's 2.5 GB."""
    return read_torch(path, remedy, keys=WEIGHT_PARTS, mmap=True)


class WeightSum:
    """A running sum of checkpoints' weights (float64), and their average as a checkpoint."""

    def __init__(self, first: dict):
        self.template = first
        self.count = 0
        self.sums = {
            part: {k: torch.zeros_like(v, dtype=torch.float64) for k, v in first[part].items() if v.is_floating_point()}
            for part in WEIGHT_PARTS
        }

    def plus(self, state: dict) -> WeightSum:
        """A new sum with `state` added (this one is left as it is)."""
        out = WeightSum.__new__(WeightSum)
        out.template, out.count = self.template, self.count + 1
        out.sums = {part: {k: s + state[part][k].double() for k, s in sums.items()} for part, sums in self.sums.items()}
        return out

    def average(self) -> dict:
        """The averaged checkpoint: float weights averaged; integer buffers (BatchNorm's step count)
        and everything else from the first checkpoint."""
        state = dict(self.template)
        for part, sums in self.sums.items():
            merged = dict(self.template[part])
            merged.update({k: (s / self.count).to(self.template[part][k].dtype) for k, s in sums.items()})
            state[part] = merged
        return state


def uniform_soup(paths: Sequence[Path]) -> tuple[dict, list[int]]:
    first = load_state(paths[0])
    total = WeightSum(first).plus(first)
    for path in paths[1:]:
        total = total.plus(load_state(path))
    return total.average(), list(range(len(paths)))


def greedy_soup(paths: Sequence[Path], score: Callable[[dict], float]) -> tuple[dict, list[int], list[float], float]:
    """The greedy soup of `paths` under `score` (higher is better): (its checkpoint, the chosen
    indices in the order added, each ingredient's own score, the soup's score)."""
    scores = [score(load_state(p)) for p in paths]
    order = sorted(range(len(paths)), key=lambda i: -scores[i])  # ties: the earlier ingredient first
    first = load_state(paths[order[0]])
    total, chosen, best = WeightSum(first).plus(first), [order[0]], scores[order[0]]
    for i in order[1:]:
        candidate = total.plus(load_state(paths[i]))
        value = score(candidate.average())
        if value >= best:  # "does not drop": an equal score still adds the run
            total, best = candidate, value
            chosen.append(i)
    return total.average(), chosen, scores, best


def interpolate(start: dict, end: dict, alpha: float) -> dict:
    """The checkpoint whose float weights are (1 - alpha) * start + alpha * end (computed in float64:
    alpha 0 gives `start`'s weights exactly, alpha 1 `end`'s); integer buffers (BatchNorm's step
    count) and everything else from `end`."""
    state = dict(end)
    for part in WEIGHT_PARTS:
        if part not in end:
            continue
        mixed = dict(end[part])
        for key, value in end[part].items():
            if value.is_floating_point():
                both = (1.0 - alpha) * start[part][key].double() + alpha * value.double()
                mixed[key] = both.to(value.dtype)
        state[part] = mixed
    return state


def wise_ft(
    start: dict, end: dict, alphas: Sequence[float], score: Callable[[dict], float]
) -> tuple[dict, float, list[float]]:
    """WiSE-FT over the grid `alphas` under `score` (higher is better): (the chosen interpolation's
    checkpoint, its alpha, each alpha's score). Ties go to the smaller alpha: of equals, the one
    nearer the start (the more general model)."""
    scores = [score(interpolate(start, end, a)) for a in alphas]
    best = max(range(len(alphas)), key=lambda i: (scores[i], -alphas[i]))
    return interpolate(start, end, alphas[best]), alphas[best], scores
