"""The NaN/inf loss watch: stops a diverging run with the step, learning rates and images to look at."""

from __future__ import annotations

import torch

from guie.data.dataset import EpochBatches
from guie.errors import GuieError
from guie.training.optimisation import learning_rates
from guie.training.spec import RunSpec


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was NaN/inf; `check` syncs and reports it.
    On a GPU, checking every step would stall the pipeline, so the loop checks every few steps."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        new = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_loss = torch.where(new, loss.detach().float(), self.bad_loss)

    def check(self, spec: RunSpec, epoch: int, batches: EpochBatches, optimizer: torch.optim.Optimizer) -> None:
        step = int(self.first_bad)
        if step < 0:
            return
        kept = (
            f"{spec.checkpoint} (the last good state) is kept"
            if spec.checkpoint.is_file()
            else "no checkpoint was written yet"
        )
        lrs = ", ".join(f"{k} {v:g}" for k, v in learning_rates(optimizer).items())
        paths = ", ".join(spec.train_rows[i].path for i in batches.global_batch(step))
        raise GuieError(
            f"{spec.stage}: loss became {float(self.bad_loss)} at epoch {epoch + 1} step {step + 1} ({lrs}); "
            f"{kept}; lower the learning rates in params.yaml (train.*). The batch's images: {paths}"
        )
