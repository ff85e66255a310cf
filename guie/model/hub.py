"""Pretrained open_clip weights on the Hugging Face hub: where a tag's file lives, whether a hub
cache already holds it, and the command that fetches it with the hub client installed here.

No function here touches the network: `guie doctor` and the `weights` stage's error message use
them to say what to run, on a machine with network, before `dvc repro`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# open_clip's default file name in a hub repository (when its config names the repository only)
DEFAULT_WEIGHTS_FILE = "open_clip_pytorch_model.bin"
# the hub's command-line clients, newest first: huggingface_hub 2.x ships `hf` only, older ones `huggingface-cli`
HUB_CLIENTS = ("hf", "huggingface-cli")


@dataclass(frozen=True)
class HubFile:
    repo: str  # e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K
    filename: str  # the file open_clip reads from it

    @property
    def alternatives(self) -> tuple[str, ...]:
        """The file names open_clip accepts, in the order it tries them (.safetensors first)."""
        stem, ext = os.path.splitext(self.filename)
        if ext in (".bin", ".pth", ".pt"):
            safe = "open_clip_model.safetensors" if self.filename == DEFAULT_WEIGHTS_FILE else f"{stem}.safetensors"
            return (safe, self.filename)
        return (self.filename,)


def hub_file(model_name: str, pretrained: str) -> HubFile | None:
    """The hub repository and file of open_clip tag `pretrained` for `model_name`; None when the tag
    is not downloaded from the hub (a local file, a URL-only tag or an unknown one)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    location = cfg.get("hf_hub") or ""
    if not location:
        return None
    repo, filename = os.path.split(location)  # as open_clip splits it: "org/name/" names the repository only
    return HubFile(repo, filename or DEFAULT_WEIGHTS_FILE)


def cached_file(file: HubFile, cache_dir: Path) -> Path | None:
    """The cached copy of `file` (any of its alternatives) in hub cache `cache_dir`, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    for name in file.alternatives:
        found = try_to_load_from_cache(file.repo, name, cache_dir=str(cache_dir))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def hub_client(search_path: str | None = None) -> str | None:
    """The hub command-line client installed here: looked up in `search_path` (default: this
    Python's scripts folder, then PATH), newest kind first."""
    if search_path is None:
        search_path = os.pathsep.join(p for p in (str(Path(sys.executable).parent), os.environ.get("PATH", "")) if p)
    for name in HUB_CLIENTS:
        if shutil.which(name, path=search_path):
            return name
    return None


def download_command(file: HubFile, cache_dir: Path, client: str | None) -> str:
    """The command that puts `file` into `cache_dir` with `client` (None: through the library)."""
    repo, name, cache = shlex.quote(file.repo), shlex.quote(file.filename), shlex.quote(str(cache_dir))
    if client is not None:
        return f"{client} download {repo} {name} --cache-dir {cache}"
    call = f"hf_hub_download({file.repo!r}, {file.filename!r}, cache_dir={str(cache_dir)!r})"
    code = f"from huggingface_hub import hf_hub_download; {call}"
    return f"python -c {shlex.quote(code)}"
