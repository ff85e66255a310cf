"""Random number generators: seeding a stage, and the states a resume checkpoint saves and restores."""

from __future__ import annotations

import random

import numpy as np
import torch

from guie.runtime import Runtime


def seed_everything(seed: int, runtime: Runtime | None = None) -> None:
    """Seed Python's, NumPy's and torch's global generators and make torch's kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # byte-identical on CPU; on GPUs some kernels (scatter-add backward) only have racy versions
    torch.use_deterministic_algorithms(True, warn_only=runtime is not None and runtime.on_gpu)


def rng_state() -> dict:
    """The global generators' states, as a checkpoint saves them."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],  # plain types: loadable with weights_only
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
