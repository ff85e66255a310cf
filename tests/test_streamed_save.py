"""Big training files are saved straight into the file: the same bytes as `atomic.torch_save`, and
a disk that refuses the write is the same one-line error (never torch's RuntimeError)."""

import resource
import signal

import pytest
import torch

from guie.atomic import torch_save
from guie.errors import GuieError
from guie.streamed_save import save_streamed


def test_the_bytes_are_torch_saves_and_nothing_is_left_beside_the_file(tmp_path):
    state = {"fingerprint": "f", "features": torch.randn(3, 5, 7), "nested": {"n": torch.arange(4)}}
    save_streamed(state, tmp_path / "a.pt")
    torch_save(state, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


def test_a_refused_write_names_the_folder_and_the_cause_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        with pytest.raises(GuieError, match=f"{tmp_path}: cannot write last.pt there: File too large"):
            save_streamed({"w": torch.zeros(1 << 20)}, target)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
