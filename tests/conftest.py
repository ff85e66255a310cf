"""Shared fixtures; plain helpers live in support.py."""

from __future__ import annotations

import pytest
import torch

from support import tiny_params_dict

torch.set_num_threads(1)  # tests run beside each other on 2 cores; no oversubscription


@pytest.fixture
def tiny_params():
    from guie.config import parse_params

    return parse_params(tiny_params_dict())
