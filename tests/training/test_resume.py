"""Resume checkpoints are written in the background from a snapshot: the main process goes on
training (and the other processes are not held at their next collective) while the file is
written, and the file holds the weights of the moment it was saved."""

import threading

import pytest
import torch

import guie.training.resume
from guie.errors import GuieError
from guie.training.optimisation import Optimisation
from guie.training.resume import ResumePoint, checkpoints_written, save_checkpoint


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)

    def state(self, stage: str, with_tower: bool = True) -> dict:
        return {"stage": stage, "head": self.head.state_dict(), "margin": {}}


def _optimisation() -> Optimisation:
    model = _Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.head(torch.ones(2, 4)).sum().backward()
    optimizer.step()  # an optimizer with state (exp_avg, ...) to snapshot too
    return Optimisation(model, optimizer, torch.amp.GradScaler("cpu", enabled=False))


def test_a_checkpoint_is_written_while_training_goes_on_and_holds_the_saved_moment(tmp_path, monkeypatch):
    optimisation, path = _optimisation(), tmp_path / "last.pt"
    saved_weight = optimisation.model.head.weight.detach().clone()
    saved_moment = optimisation.optimizer.state[optimisation.model.head.weight]["exp_avg"].clone()
    release, real_save = threading.Event(), torch.save

    def slow_disk(obj, f):
        assert release.wait(timeout=60)
        real_save(obj, f)

    monkeypatch.setattr(guie.training.resume.torch, "save", slow_disk)
    with checkpoints_written():
        save_checkpoint(path, "fp", "head", optimisation, ResumePoint(epoch=1), frozen_tower=True)
        assert not path.exists()  # save_checkpoint returned before its write finished
        with torch.no_grad():  # training goes on, in place, while the checkpoint is written
            optimisation.model.head.weight.add_(1.0)
            optimisation.optimizer.state[optimisation.model.head.weight]["exp_avg"].add_(1.0)
        release.set()
    state = torch.load(path, weights_only=True)  # on disk once the block ends
    assert torch.equal(state["model"]["head"]["weight"], saved_weight)
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], saved_moment)
    assert state["progress"]["epoch"] == 1 and state["fingerprint"] == "fp"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left beside it


def test_a_write_that_fails_in_the_background_is_raised_when_the_run_ends(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(GuieError, match="cannot write last.pt"), checkpoints_written():
        save_checkpoint(tmp_path / "file" / "last.pt", "fp", "head", _optimisation(), ResumePoint(), True)
    with checkpoints_written():  # the error was reported once: the next run starts clean
        pass


def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path):
    optimisation = _optimisation()
    with torch.no_grad():
        optimisation.model.head.bias[0] = float("nan")
    with pytest.raises(GuieError, match="non-finite"), checkpoints_written():
        save_checkpoint(tmp_path / "last.pt", "fp", "head", optimisation, ResumePoint(), True)
    assert not (tmp_path / "last.pt").exists()
