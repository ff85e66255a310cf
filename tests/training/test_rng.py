"""The RNG states a resume checkpoint carries: saved with weights_only-loadable types, restored exactly."""

import random

import numpy as np
import torch

from guie.training.rng import rng_state, seed_everything, set_rng_state


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_a_saved_rng_state_restores_every_generator_after_a_checkpoint_round_trip(tmp_path):
    seed_everything(7)
    _draws()
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # the generators move on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected
