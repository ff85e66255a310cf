"""Run the host's calls in a child interpreter (`child.py`, by path) and watch it.

The child may be someone else's model. It talks on a pipe of its own (what the model prints is
discarded), each step it announces must end within its limit (the load `load_timeout`, each call
`call_timeout`; a step is timed from its announcement, whatever the model prints meanwhile), its
resident memory is watched where the child could not cap its own address space (CUDA), and it is
killed with its whole process group when a limit is passed, when verify ends, and when verify gets
SIGTERM or SIGINT (`stop_on_signals`); the child asks the kernel to kill it if verify is SIGKILLed.
"""

from __future__ import annotations

import collections
import io
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from guie.errors import GuieError

CHILD = Path(__file__).with_name("child.py")
# The model is loaded and called in a child process killed when one step (the load, or one host
# call) takes longer than this: a forward that never returns cannot be interrupted in-process.
# ViT-H-14 float32 on 2 CPU cores: ~3 s a call, ~20 s to load.
CALL_TIMEOUT_S = 600.0
# What the child may add to its memory once torch is imported: the weights (loaded once), the
# activations of one call and torch's per-thread allocator arenas. A float32 ViT-H (2.5 GB) needs ~6 GB.
MIN_MEMORY_HEADROOM = 4 << 30
MEMORY_HEADROOM_PER_MODEL_BYTE = 4
TIMING_SIZE = (512, 512)  # the 130k public set's size; the model's cost does not depend on it beyond the resize
WATCH_S = 0.25  # how often the parent looks at the child's resident memory while it waits
STDERR_TAIL = 64 << 10  # the bytes of the child's stderr kept for error messages
EXIT_GRACE_S = 60.0  # how long the child may take to exit after its last message


def memory_headroom(model_bytes: int) -> int:
    return max(MIN_MEMORY_HEADROOM, MEMORY_HEADROOM_PER_MODEL_BYTE * model_bytes)


@dataclass(frozen=True, kw_only=True)
class ChildSettings:
    """How the child interpreter runs: start-up and the load within `load_timeout` s, each call within
    `call_timeout` s; it may add `memory_headroom_bytes` (None: `memory_headroom(model size)`) to its
    memory once torch is imported; `fence_files`: Landlock where the kernel has it; `env`: its
    environment (None: this one's)."""

    call_timeout: float = CALL_TIMEOUT_S
    load_timeout: float = CALL_TIMEOUT_S
    memory_headroom_bytes: int | None = None
    fence_files: bool = True
    env: dict[str, str] | None = None


@dataclass
class HostCalls:
    """What a child interpreter reported: its torch, per-input outputs (two calls each) or errors."""

    torch: str
    cuda: bool
    where: str  # the device the calls ran on, in words
    outputs: dict[str, torch.Tensor]  # name -> first call's output
    again: dict[str, torch.Tensor]  # name -> second call's output
    errors: dict[str, str]  # name -> what the call raised
    seconds_per_image: float | None
    flops_per_call: int | None = None  # counted when asked (this interpreter)
    fence: dict[str, str] = field(default_factory=dict)  # what the child was fenced with: "files", "memory"


class HostCallError(RuntimeError):
    """The child interpreter failed in `step` ("start-up", "load", "call 1x1", "timing call")."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


class VerifyInterrupted(GuieError):
    """verify got SIGTERM or SIGINT: raised so that the child is killed and temp files removed on the way out."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise VerifyInterrupted (main thread only: elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise VerifyInterrupted(
            f"verify stopped by {signal.Signals(signum).name}; the model's process was killed and its files removed"
        )

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class _Watch:
    """The child's channel lines (then None) and its stderr's tail, read by two threads."""

    def __init__(self, child: subprocess.Popen, channel: int):
        self.lines: queue.Queue = queue.Queue()
        self._tail: collections.deque[bytes] = collections.deque()
        self._threads = [
            threading.Thread(target=self._pump, args=(channel,), daemon=True),
            threading.Thread(target=self._keep_tail, args=(child.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                self.lines.put(line)
        self.lines.put(None)

    def _keep_tail(self, stream: io.BufferedReader) -> None:
        kept = 0
        while chunk := stream.read1(1 << 16):
            self._tail.append(chunk)
            kept += len(chunk)
            while kept - len(self._tail[0]) >= STDERR_TAIL:
                kept -= len(self._tail.popleft())

    def stderr_tail(self, chars: int = 500) -> str:
        return b"".join(self._tail).decode("utf-8", errors="replace").strip()[-chars:]

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)


def _resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _message(line: bytes, expected: set[str]) -> dict | None:
    """A step message the child may still send, or None (anything else on the channel is ignored)."""
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or message.get("step") not in expected:
        return None
    expected.discard(message["step"])  # each step once: nothing resets a step's clock twice
    return message


def _follow_steps(
    child: subprocess.Popen, watch: _Watch, expected: set[str], python: Path | str, timeouts: tuple[float, float]
) -> tuple[list[dict], str]:
    """The child's messages until its channel closes, and the last step it announced. Raises
    HostCallError when a step (start-up and the load: `timeouts[0]`, a call: `timeouts[1]`) takes longer,
    or when the child's resident memory passes the cap it announced."""
    messages: list[dict] = []
    step, rss_cap = "start-up", 0
    limit = timeouts[0]
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HostCallError(
                step,
                f"{step} did not return within {limit:g} s in {python}; the child was killed "
                "(a forward that never ends? if the model is just slow, raise --call-timeout)",
            )
        try:
            line = watch.lines.get(timeout=min(left, WATCH_S))
        except queue.Empty:
            if rss_cap and (held := _resident_bytes(child.pid)) > rss_cap:
                raise HostCallError(
                    step,
                    f"the model's process held {held / 2**30:.1f} GiB during {step}, above verify's cap of "
                    f"{rss_cap / 2**30:.1f} GiB; it was killed",
                ) from None
            continue
        if line is None:
            return messages, step
        if (message := _message(line, expected)) is None:
            continue
        messages.append(message)
        step = message["step"]
        if step in ("done", "failed"):
            return messages, step
        rss_cap = rss_cap or int(message.get("fence", {}).get("rss_cap", 0))
        limit = timeouts[0] if step == "load" else timeouts[1]
        deadline = time.monotonic() + limit


def _wait(child: subprocess.Popen, seconds: float) -> None:
    try:
        child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass  # killed by the caller


def _finished(python: Path | str, returncode: int, messages: list[dict], step: str, err_tail: str) -> dict:
    """The child's last message when it ran to the end; HostCallError saying why it did not."""
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        raise HostCallError(
            step,
            f"{python} was killed by {sig} during {step} (torch 1.11 aborts on an archive it cannot read); "
            f"stderr: {err_tail}",
        )
    last = messages[-1] if messages else {}
    if "load_error" in last:
        raise HostCallError(
            "load", f"torch {messages[0].get('torch')} in {python} cannot load the model: {last['load_error']}"
        )
    if returncode != 0 or last.get("step") != "done":
        raise HostCallError(step, f"{python} failed during {step} (exit {returncode}): {err_tail}")
    return last


def _start(python: Path | str, config: dict, env: dict[str, str] | None) -> tuple[subprocess.Popen, int]:
    """The child and the read end of its channel."""
    read_end, write_end = os.pipe()
    config["channel_fd"] = write_end
    try:
        child = subprocess.Popen(
            [str(python), str(CHILD), json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the host ignores what a model prints; so does verify
            stderr=subprocess.PIPE,
            pass_fds=(write_end,),
            env=env,
            start_new_session=True,  # its own process group: killed whole
        )
    except OSError as err:
        os.close(read_end)
        raise HostCallError("start-up", f"cannot run {python}: {err}") from None
    finally:
        os.close(write_end)
    return child, read_end


def run_host_calls(
    python: Path | str,
    model_path: Path,
    inputs: dict[str, torch.Tensor],
    *,
    timing_calls: int = 0,
    count_flops: bool = False,
    child_settings: ChildSettings | None = None,
) -> HostCalls:
    """Load the model and call it on each input (twice) in a child interpreter, as the host does.

    The child is killed past `child_settings`' limits (see `ChildSettings`). `timing_calls`: median of
    that many timed 512x512 calls (after 2 warm-up ones); `count_flops`: the host call's FLOPs (this
    interpreter only: guie's counter). Raises HostCallError saying why when the interpreter cannot run,
    dies (a signal: torch 1.11 aborts on archives it cannot read), hangs in a step, passes its memory
    cap, or cannot load the model."""
    import guie

    settings = child_settings or ChildSettings()
    headroom = settings.memory_headroom_bytes or memory_headroom(Path(model_path).stat().st_size)
    expected = {"load", "failed", "done", "timing call", "flop count"} | {f"call {name}" for name in inputs}
    with stop_on_signals(), tempfile.TemporaryDirectory(prefix="guie-verify-") as tmp:
        config = {
            "model": str(Path(model_path).resolve()),
            "workdir": os.path.realpath(tmp),
            "inputs": os.path.join(tmp, "inputs.pt"),
            "outputs": os.path.join(tmp, "outputs.pt"),
            "timing_calls": timing_calls,
            "timing_size": list(TIMING_SIZE),
            "count_flops": count_flops,
            "guie_root": str(Path(guie.__file__).resolve().parent.parent),
            "memory_headroom": headroom,
            "fence_files": settings.fence_files,
            "parent_pid": os.getpid(),
        }
        torch.save(inputs, config["inputs"])
        child, channel = _start(python, config, settings.env)
        watch = _Watch(child, channel)
        try:
            messages, step = _follow_steps(
                child, watch, expected, python, (settings.load_timeout, settings.call_timeout)
            )
            _wait(child, EXIT_GRACE_S)  # after its last message the child only exits (torch's teardown)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)  # the child's whole group: nothing outlives verify
            child.wait()
            watch.join()
        last = _finished(python, child.returncode, messages, step, watch.stderr_tail())
        saved = torch.load(config["outputs"], map_location="cpu", weights_only=True)
    first = messages[0]
    where = first["device_name"] if first["cuda"] else f"the CPU ({first['threads']} threads)"
    return HostCalls(
        first["torch"],
        first["cuda"],
        where,
        {k: v for k, v in saved.items() if not k.endswith("#again")},
        {k[: -len("#again")]: v for k, v in saved.items() if k.endswith("#again")},
        last["errors"],
        last["seconds_per_image"],
        last.get("flops"),
        {k: str(v) for k, v in first.get("fence", {}).items() if k != "rss_cap"},
    )
