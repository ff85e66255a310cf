"""The host's calls, run by path in a child interpreter: `python child.py '<json config>'`.

The interpreter is this one or another (`guie verify --runtime`, e.g. torch 1.11 on Python 3.10),
so this file imports nothing from guie at the top and uses nothing newer than both have (no numpy,
no PIL). It loads the model and calls it exactly as the scorer does, behind a fence:

- the protocol is JSON lines on an inherited pipe (`channel_fd`), never stdout: the host ignores
  what a model prints, and so does verify (stdout is discarded, stderr's tail kept for errors);
- it announces each step before taking it, so the parent can time each step and name the one that
  hangs;
- it dies with its parent (PR_SET_PDEATHSIG: even a SIGKILLed verify leaves no child running);
- before the model is loaded (TorchScript runs a module's `__setstate__` while loading), it caps
  its address space (RLIMIT_AS; with CUDA, which reserves far more address space than it uses,
  the parent caps its resident memory instead) and, where the kernel has Landlock, restricts
  itself to writing only inside `workdir` and reading only the artifact, `workdir`, the Python
  installation and the system's libraries (`/usr`, `/lib*`, `/sys`, its own `/proc/<pid>`), and
  to no TCP (Landlock ABI >= 4).

Tensors travel as torch.save files, which torch 1.11 reads from torch 2.x and the other way round.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import signal
import statistics
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
# Landlock (linux/landlock.h): syscall numbers are the same on every architecture
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ALL_FS_V1 = (1 << 13) - 1  # execute .. make_sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE  # the rights a rule on a file (not a folder) may carry
_BIND_TCP, _CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
# readable beneath these, besides the artifact and the Python installation: shared libraries, the CPU's
# features (cpuinfo, read by float16 kernels), the cgroup's limits, this process's own /proc/<pid>
# (not other processes': their environments hold secrets)
SYSTEM_READ = (
    "/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/sys/devices/system", "/sys/bus/pci", "/sys/fs/cgroup",
    "/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/dev/zero", "/dev/urandom", "/dev/random",
)  # fmt: skip
SYSTEM_WRITE = ("/dev/null",)  # and the GPU's device files, /dev/nvidia*


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> tuple[int, str]:
    """(the kernel's Landlock ABI version, "") or (0, why there is none)."""
    if not sys.platform.startswith("linux"):
        return 0, f"Landlock is Linux-only (this is {sys.platform})"
    abi = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    if abi < 0:
        err = ctypes.get_errno()
        why = {
            38: "the kernel has no Landlock (ENOSYS: before 5.13, or blocked by a seccomp filter)",
            95: "Landlock is built in but disabled (EOPNOTSUPP: add landlock to the lsm= boot option)",
        }
        return 0, why.get(err, f"landlock_create_ruleset failed: {os.strerror(err)}")
    return int(abi), ""


def die_with_parent(parent_pid: int) -> str:
    """Ask the kernel to SIGKILL this process when its parent dies; "" or why it could not."""
    if not sys.platform.startswith("linux"):
        return f"no PR_SET_PDEATHSIG on {sys.platform}"
    if _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}"
    if os.getppid() != parent_pid:  # the parent died before the request: nobody is waiting for us
        os._exit(1)
    return ""


def _add_rule(libc, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent here (e.g. /lib32): nothing to allow
    try:
        if not os.path.isdir(path):
            access &= _FILE_RIGHTS
        rule = _PathBeneathAttr(access, fd)
        if (
            libc.syscall(
                _ADD_RULE,
                ctypes.c_int(ruleset),
                ctypes.c_int(_RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            )
            != 0
        ):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def python_paths() -> list[str]:
    """The Python installation: prefixes and the folders imports come from (site-packages, the stdlib),
    not the current directory or a checkout on sys.path."""
    import torch

    found = {
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.dirname(torch.__file__)),
    }
    found |= {p for p in sys.path if p and re.search(r"(site|dist)-packages|/lib/python\d", p)}
    return sorted({os.path.realpath(p) for p in found} | found)


def landlock(readable: list[str], writable: list[str], abi: int) -> None:
    """Restrict this process (and every thread and process it starts later) to reading `readable` and
    reading and writing `writable`, each a file or a folder and everything beneath it; no TCP when
    the ABI can say so."""
    libc = _libc()
    handled = _ALL_FS_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled, _BIND_TCP | _CONNECT_TCP if abi >= 4 else 0)
    size = ctypes.sizeof(attr) if abi >= 4 else ctypes.sizeof(ctypes.c_uint64)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path in readable:
            _add_rule(libc, ruleset, path, _READ_FILE | _READ_DIR | _EXECUTE)
        for path in writable:
            _add_rule(libc, ruleset, path, handled)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
        if libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def _memory_now(field: str) -> int:
    """VmSize or VmRSS of this process in bytes (Linux), 0 where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fence(config: dict, cuda: bool) -> dict:
    """Put up what this platform allows; what it put up, in words (the same on every run of an artifact
    on one machine: metrics/verify.json is rebuilt byte for byte), and the resident-memory cap the
    parent must watch (bytes, 0 for none)."""
    headroom = int(config["memory_headroom"])
    rss_cap, memory = 0, ""
    if cuda:  # CUDA reserves address space far beyond what it uses: the parent watches the resident memory
        rss_cap = _memory_now("VmRSS") + headroom
        memory = f"resident memory capped at {headroom / 2**30:.1f} GiB above torch's import (watched by verify)"
    elif not _memory_now("VmSize"):
        memory = f"not capped: no /proc/self/status to measure from ({sys.platform})"
    else:
        cap = _memory_now("VmSize") + headroom
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            memory = f"address space capped at {headroom / 2**30:.1f} GiB above torch's import (RLIMIT_AS)"
        except (ValueError, OSError) as err:
            memory = f"not capped: setrlimit(RLIMIT_AS) failed ({err})"
    if not config["fence_files"]:
        return {"files": "not fenced (asked not to)", "memory": memory, "rss_cap": rss_cap}
    abi, why = landlock_abi()
    if not abi:
        return {"files": "not fenced: " + why, "memory": memory, "rss_cap": rss_cap}
    devices = ["/dev/" + name for name in os.listdir("/dev") if name.startswith("nvidia")] if cuda else []
    landlock(
        [config["model"], *python_paths(), *SYSTEM_READ],
        [config["workdir"], *SYSTEM_WRITE, *devices],
        abi,
    )
    net = ", no TCP" if abi >= 4 else ""
    files = f"Landlock ABI {abi}: writes only in its temp folder, reads only the artifact, Python and system libraries"
    return {"files": files + net, "memory": memory, "rss_cap": rss_cap}


def describe(err: BaseException, at_load: bool) -> str:
    """One line: a load (compile) error leads with its cause; a call error is a TorchScript traceback
    whose last line is the cause ("RuntimeError: ...")."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = (" ".join(lines[:2]) if at_load else (lines[-1] if lines else ""))[:400]
    return text if re.match(r"\w*(Error|Exception): ", text) else f"{type(err).__name__}: {text}"


class Channel:
    """JSON lines to the parent on an inherited pipe."""

    def __init__(self, fd: int):
        self._out = os.fdopen(fd, "w", buffering=1)

    def say(self, **message: object) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()


def _timing(model, size: list[int], calls: int) -> float:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, size[0], size[1]), generator=g, dtype=torch.uint8)
    times = []
    for i in range(2 + calls):  # 2 warm-up calls: the profiling executor optimises the graph first
        start = time.perf_counter()
        torch.flatten(model(x)[0]).cpu()  # the host's call; .cpu() waits for the GPU
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _host_calls(model, inputs: dict, channel: Channel) -> tuple[dict, dict]:
    import torch

    outputs, errors = {}, {}
    for name, x in inputs.items():
        channel.say(step="call " + name)
        try:
            out, again = model(x), model(x)
            if isinstance(out, torch.Tensor) and isinstance(again, torch.Tensor):
                outputs[name], outputs[name + "#again"] = out.detach().cpu(), again.detach().cpu()
            else:
                errors[name] = f"output is {type(out).__name__}, not a tensor"
        except Exception as err:
            errors[name] = describe(err, False)
    return outputs, errors


def run(config: dict, channel: Channel) -> int:
    import torch

    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else ""  # initialises CUDA before the fence
    count = None
    if config["count_flops"]:  # this interpreter only: the counter is guie's (torch 2.x), imported before the fence
        sys.path.insert(0, config["guie_root"])
        from guie.scorer_budget import count_flops as count
    fenced = fence(config, cuda)
    inputs = torch.load(config["inputs"])
    channel.say(
        step="load",
        torch=torch.__version__,
        cuda=cuda,
        threads=torch.get_num_threads(),
        device_name=device_name,
        fence=fenced,
    )
    try:
        # the host loads without a map location; without a GPU here a CUDA artifact is mapped to the CPU
        model = torch.jit.load(config["model"], map_location=None if cuda else "cpu")
        model.eval()
    except Exception as err:
        channel.say(step="failed", load_error=describe(err, True))
        return 3
    seconds, flops = None, None
    with torch.no_grad():
        outputs, errors = _host_calls(model, inputs, channel)
        if config["timing_calls"]:
            channel.say(step="timing call")
            try:
                seconds = _timing(model, config["timing_size"], int(config["timing_calls"]))
            except Exception as err:
                errors["timing call"] = describe(err, False)
        if count is not None:
            channel.say(step="flop count")
            try:
                flops = count(model)
            except Exception as err:
                errors["flop count"] = describe(err, False)
    torch.save(outputs, config["outputs"])
    channel.say(step="done", errors=errors, seconds_per_image=seconds, flops=flops)
    return 0


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    why = die_with_parent(int(config["parent_pid"]))
    channel = Channel(int(config["channel_fd"]))
    if why:
        sys.stderr.write(f"guie verify's child: {why}\n")
    return run(config, channel)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
