"""Weight-space ensembles (Wortsman et al. 2022).

Soups: one stage trained several times from the same start (seeds, augmentations), its runs'
weights averaged. Uniform: all of them. Greedy: best first on the selection split, then each
next-best run is added only if the soup's selection mP@5 does not drop.

WiSE-FT (robust fine-tuning, CVPR 2022): the weights interpolated between the stage's start and
its trained (or souped) weights, the mixing coefficient chosen on the selection split.

Under torchrun one process averages (or interpolates), streaming the runs' memory-mapped weights a
tensor at a time, and the others map what it wrote (`StateShare`): one copy per node."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from guie.runtime import Runtime, barrier
from guie.streamed_save import save_streamed
from guie.torch_file import read_torch

# the parts of a stage checkpoint that are weights (the rest, definition and classes, is shared)
WEIGHT_PARTS = ("tower", "head", "margin")


def load_state(path: Path, remedy: str = "delete it and run the stage again") -> dict:
    """A run's checkpoint, memory-mapped: reading one entry (a run's summary) does not read a
    ViT-H's 2.5 GB."""
    return read_torch(path, remedy, keys=WEIGHT_PARTS, mmap=True)


def average(states: Sequence[dict]) -> dict:
    """The checkpoint averaging `states`: float weights summed in float64 one tensor at a time, in
    the order given (memory-mapped states are read a tensor at a time: the peak is one averaged
    model and one float64 tensor); integer buffers (BatchNorm's step count) and everything else
    from the first."""
    first = states[0]
    state = dict(first)
    for part in WEIGHT_PARTS:
        merged = dict(first[part])
        for key, value in first[part].items():
            if value.is_floating_point():
                total = torch.zeros_like(value, dtype=torch.float64)
                for other in states:
                    total += other[part][key]  # in float64: the sum is exact to float64's precision
                merged[key] = (total / len(states)).to(value.dtype)
                del total
        state[part] = merged
    return state


@dataclass(frozen=True)
class StateShare:
    """How every process gets a state that one computes: the main process computes it and writes
    it beside the ingredients, and each process memory-maps that file, so a node holds it once in
    its page cache instead of once per process. On one process: the state itself, no file."""

    runtime: Runtime
    folder: Path

    def __call__(self, make: Callable[[], dict]) -> dict:
        if self.runtime.world == 1:
            return make()
        path = self.folder / ".shared-state.pt"
        if self.runtime.main:
            save_streamed(make(), path)
        barrier(self.runtime)
        state = load_state(path)
        barrier(self.runtime)  # every process has it mapped: the name can go
        if self.runtime.main:
            path.unlink()
        return state


def _here(make: Callable[[], dict]) -> dict:
    return make()


def _soup_of(paths: Sequence[Path], indices: Sequence[int]) -> Callable[[], dict]:
    return lambda: average([load_state(paths[i]) for i in indices])


def uniform_soup(paths: Sequence[Path], share: Callable[[Callable[[], dict]], dict] = _here) -> tuple[dict, list[int]]:
    """The average of every run at `paths`, and their indices. `share`: how the processes get it
    (`StateShare`; by default this process computes it)."""
    chosen = list(range(len(paths)))
    return share(_soup_of(paths, chosen)), chosen


def greedy_soup(
    paths: Sequence[Path], score: Callable[[dict], float], share: Callable[[Callable[[], dict]], dict] = _here
) -> tuple[dict, list[int], list[float], float]:
    """The greedy soup of `paths` under `score` (higher is better): (its checkpoint, the chosen
    indices in the order added, each ingredient's own score, the soup's score). Each candidate is
    averaged from the memory-mapped runs, one at a time; every process scores it (see `uniform_soup`)."""
    scores = [score(load_state(p)) for p in paths]
    order = sorted(range(len(paths)), key=lambda i: -scores[i])  # ties: the earlier ingredient first
    chosen, best, state = [order[0]], scores[order[0]], None  # state: the soup of `chosen`, if computed
    for i in order[1:]:
        state = None  # one candidate in memory at a time
        candidate = share(_soup_of(paths, [*chosen, i]))
        value = score(candidate)
        if value >= best:  # "does not drop": an equal score still adds the run
            chosen, best, state = [*chosen, i], value, candidate
        del candidate
    if state is None:
        state = share(_soup_of(paths, chosen))
    return state, chosen, scores, best


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
    start: dict,
    end: dict,
    alphas: Sequence[float],
    score: Callable[[dict], float],
    share: Callable[[Callable[[], dict]], dict] = _here,
) -> tuple[dict, float, list[float]]:
    """WiSE-FT over the grid `alphas` under `score` (higher is better): (the chosen interpolation's
    checkpoint, its alpha, each alpha's score). Ties go to the smaller alpha: of equals, the one
    nearer the start (the more general model). `share`: see `uniform_soup`."""
    scores = [score(share(partial(interpolate, start, end, a))) for a in alphas]
    best = max(range(len(alphas)), key=lambda i: (scores[i], -alphas[i]))
    return share(partial(interpolate, start, end, alphas[best])), alphas[best], scores
