"""Helpers shared by tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_params_dict() -> dict:
    """The default params.yaml shrunk so every stage runs in seconds on a CPU."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    train_src, pca_src = raw["data"]["sources"]
    train_src.update(
        domains=["apparel", "cars", "toys"], instances_per_domain=8, views_per_instance=4, min_side=48, max_side=128
    )
    pca_src.update(
        domains=["apparel", "cars", "toys"], instances_per_domain=12, views_per_instance=2, min_side=48, max_side=128
    )
    raw["train"]["stages"]["head"]["epochs"] = 1
    raw["train"]["stages"]["finetune"]["epochs"] = 1
    raw["train"]["batch_size"] = 16
    raw["evaluate"]["bootstrap"] = 50
    return raw


def resolved_stages(params_file: Path = REPO / "params.yaml") -> dict:
    """dvc.yaml's stages as DVC resolves them against `params_file`: the `train` template once per
    entry of train.stages (`train@<name>`), `${train.final}` and the entry's fields substituted."""
    raw = yaml.safe_load(params_file.read_text())
    stages: dict = {}
    for name, spec in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        text = yaml.safe_dump(spec.get("do", spec)).replace("${train.final}", raw["train"]["final"])
        if "foreach" not in spec:
            stages[name] = yaml.safe_load(text)
            continue
        assert spec["foreach"] == "${train.stages}", spec["foreach"]
        for key, item in raw["train"]["stages"].items():
            stages[f"{name}@{key}"] = yaml.safe_load(text.replace("${key}", key).replace("${item.from}", item["from"]))
    return stages


def train_in(params, layout, stage: str, fresh: bool = False, **paths) -> dict:
    """Train stage `stage` of params.train.stages in `layout`, with the paths `guie train <stage>` uses
    (`paths` overrides any of `TrainPaths`' fields)."""
    from guie.stages.train import TrainPaths, train_stage

    where = dataclasses.replace(TrainPaths.in_layout(layout, params, stage), **paths)
    return train_stage(params, stage, where, fresh=fresh)


def save_image_row(root: Path, path: str, image, label: str = "x", domain: str = "cars", split: str = "pca", **save):
    """Save a PIL `image` at root/path (format from the suffix, `save` to Image.save); returns its manifest row."""
    import hashlib

    from guie.data.manifest import ManifestRow

    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, **save)
    return ManifestRow(
        path, hashlib.sha256(target.read_bytes()).hexdigest(), "test", domain, label, split, image.width, image.height
    )


def tiny_embedder(seed: int = 0, projection=None):
    """A scriptable Embedder small enough to run per image: 32 px squash -> Linear tower (24) -> head (16)."""
    import torch

    from guie.data.transforms import EvalPreprocess
    from guie.model.embedder import Embedder
    from guie.model.head import build_head

    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(seed)
        tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 24))
        head = build_head(24, 16, 0.2)
        with torch.no_grad():  # BatchNorm statistics that are not the identity, so eval mode matters
            head[0].running_mean.uniform_(-0.5, 0.5)
            head[0].running_var.uniform_(0.5, 2.0)
    pre = EvalPreprocess(32, "squash", (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    return Embedder(pre, tower, head, projection).eval()


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def nan_loss_at_call(monkeypatch, n: int) -> list:
    """Make the n-th training loss NaN (as a diverging run would); returns the growing list of calls."""
    from guie.model.loss import MarginLoss

    real, calls = MarginLoss.forward, []

    def forward(self, *args):
        calls.append(1)
        loss = real(self, *args)
        return loss * float("nan") if len(calls) == n else loss

    monkeypatch.setattr(MarginLoss, "forward", forward)
    return calls


class Interrupted(Exception):
    """Raised where a test kills a training run."""


def interrupt_after_saves(monkeypatch, n: int) -> list:
    """Make the n-th resume-checkpoint save the last thing a training run does, as if killed right after it."""
    import guie.training.loop

    real, calls = guie.training.loop.save_checkpoint, []

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(args[0])
        if len(calls) == n:
            raise Interrupted

    monkeypatch.setattr(guie.training.loop, "save_checkpoint", save_then_die)
    return calls


def make_project(root: Path, params: dict) -> Path:
    """A DVC project like a fresh clone: the package sources the stages depend on, dvc.yaml, .gitignore, params."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "guie", root / "guie", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    write_params(root / "params.yaml", params)
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    return root


def run(cmd: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(cwd),  # the project copy's guie, not the editable install's
        DVC_NO_ANALYTICS="1",
    )
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def host_call_children(parent: int | None = None) -> list[int]:
    """Running processes of verify's host-call child (guie/verification/child.py), those of `parent` when
    given (other test runs' are not ours). A dead one (a zombie) has no command line and is not listed."""
    marker, found = str(REPO / "guie" / "verification" / "child.py").encode(), []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (parent is None or ppid == parent) and marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def clone_files(src: Path) -> list[str]:
    """What a fresh clone of `src` would hold if its working tree were committed now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = sorted({name for name in listed.split("\0") if name})
    return [name for name in names if (src / name).is_file() or (src / name).is_symlink()]


def fresh_clone(src: Path, dest: Path) -> Path:
    """A git repository at `dest` holding what `git clone` of `src` would, were its working tree
    committed now (tracked files plus untracked ones git does not ignore; edits count)."""
    for name in clone_files(src):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, target, follow_symlinks=False)
    assert (dest / ".dvc" / "config").is_file(), "the repository commits .dvc/config: a clone is a DVC project"
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A", "--force"], dest)  # exactly the copied files: tracked ones may match an ignore rule
    run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "clone"],
        dest,
    )
    return dest


def guie_cli(
    *args: str, root: Path, mounts: str = "", after: str = "", preexec_fn=None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`guie <args> --params <root>/params.yaml --root <root>` in a subprocess. `mounts`: shell
    commands run first in a private user and mount namespace (`mounts_allowed`), e.g. a small tmpfs
    over an output folder; the mounts vanish with the command, so nothing is left mounted. `after`:
    shell commands run after it in that namespace (their output goes to stdout)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "guie", *args, "--params", str(root / "params.yaml"), "--root", str(root)]
    if mounts:
        script = f'{mounts}\nset +e\n"$@"\nrc=$?\n{after}\nexit $rc'
        cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-ec", script, "sh", *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=preexec_fn, cwd=root
    )


def mounts_allowed() -> bool:
    """Whether this machine lets a process mount a tmpfs in a namespace of its own (no root needed)."""
    try:
        probe = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-ec", "mount -t tmpfs -o size=1m tmpfs /mnt"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def full_tmpfs(folder: Path, size: str = "4m", keep: bool = False) -> str:
    """Mount commands (for `guie_cli`) putting `folder` on a tmpfs of `size`; `keep` copies its files
    over first and then fills what is left, so the disk is full."""
    cmds = []
    if keep:
        cmds.append(f"cp -a '{folder}' /tmp/.guie-keep-$$")
    cmds.append(f"mount -t tmpfs -o size={size} tmpfs '{folder}'")
    if keep:
        cmds += [f"cp -a /tmp/.guie-keep-$$/. '{folder}/'", "rm -rf /tmp/.guie-keep-$$"]
        cmds.append(f"cat /dev/zero > '{folder}/.fill' 2>/dev/null || true")
    return "\n".join(cmds)


def read_only(folder: Path) -> str:
    """Mount commands (for `guie_cli`) making `folder` read-only for everyone, root included."""
    return f"mount --bind '{folder}' '{folder}'\nmount -o remount,bind,ro '{folder}'"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a refused command (exit 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "c10::Error" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def free_port() -> int:
    """A TCP port nothing listens on now: for a test's own process group (MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
