"""How guie uses the CPU's threads: a fixed numerics thread count, and OpenMP threads that yield.

Numerics: torch splits a CPU reduction (a weight's gradient summed over the batch, a mean, a
matrix product's inner sum) between its intra-op threads, so the floats depend on how many there
are (a head stage's loss moved at 1e-8 with OMP_NUM_THREADS=1). Every stage that computes therefore
runs with NUMERICS_THREADS intra-op threads on every machine, whatever OMP_NUM_THREADS or the core
count says: outputs are byte-identical per CPU family, not per core count. Cores beyond it serve
the loader workers (`train.num_workers`; torch gives each one thread).

Sharing: torch's OpenMP runtime (libgomp) keeps a thread that finishes its share of an op spinning
(300000 rounds) before it sleeps. Beside another CPU-bound process one of the two threads is often
preempted, and its partner spins away the time slice the preempted thread needs, so every small op
costs a slice: a training epoch went from 3 s to 70-110 s. A short spin (SPIN_COUNT) lets the
waiting thread give its core up soon; too short, and an idle machine pays a sleep and a wake-up
between ops (the embedded default's finetune stage: 1.6x slower alone), so the short spin is
opt-in: `GUIE_SHARED_CPU=1` on a machine shared with other CPU-bound work (README, "CPU threads");
a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins. libgomp reads them once, when torch is imported, so they
must be in the environment before that: `guie`'s command re-executes itself with `process_env`
(as it does for PYTHONHASHSEED), and the processes it starts (DVC stages' commands, torchrun
children, verify's host-call child, loader workers) inherit it. `benchmarks/shared_cpu.py`
measures both cases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

NUMERICS_THREADS = 2  # intra-op threads of every stage's torch numerics; changing it changes the outputs' floats
SPIN_COUNT = 3000  # libgomp's busy-wait rounds before a waiting thread sleeps (its default: 300000)
SHARED_CPU = "GUIE_SHARED_CPU"  # =1: this machine is shared, use SPIN_COUNT
# a user's own OpenMP wait settings win over the policy
WAIT_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

P = ParamSpec("P")
R = TypeVar("R")


def process_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the thread policy's OpenMP settings added on a shared machine (`GUIE_SHARED_CPU=1`;
    those the user set are kept)."""
    env = dict(environ)
    if env.get(SHARED_CPU) == "1" and not any(key in env for key in WAIT_SETTINGS):
        env["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return env


@contextmanager
def numerics_threads() -> Iterator[None]:
    """torch's intra-op threads at NUMERICS_THREADS inside, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(NUMERICS_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fixed_numerics(fn: Callable[P, R]) -> Callable[P, R]:
    """A stage entry point that computes with NUMERICS_THREADS intra-op threads (`numerics_threads`)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with numerics_threads():
            return fn(*args, **kwargs)

    return wrapper
