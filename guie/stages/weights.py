"""The `weights` stage: the backbone checkpoint every later stage loads.

Real weights (an open_clip pretrained tag) and the embedded default (a seeded random init) both
end up as one checkpoint file, models/backbone.pt, and both load through open_clip's own
checkpoint path, so the tiny default exercises exactly the code a real run uses.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import open_clip
import torch

from guie.atomic import torch_save
from guie.errors import GuieError
from guie.model.backbone import check_model_name, quiet_open_clip, tower_mean_std
from guie.model.hub import download_command, hub_client, hub_file
from guie.model.legacy import check_exportable
from guie.params.model import ModelParams


def _root_cause(err: BaseException) -> str:
    """The innermost exception of a chain, in one short line (open_clip wraps the hub's error twice)."""
    seen = {id(err)}
    while (inner := err.__cause__ or err.__context__) is not None and id(inner) not in seen:
        err = inner
        seen.add(id(err))
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text if len(text) <= 100 else text[:97] + '...'}"


def _download_error(params: ModelParams, cache_dir: Path | None, err: Exception) -> GuieError:
    file = hub_file(params.name, params.pretrained)
    cache = str(cache_dir) if cache_dir else "the Hugging Face hub cache ($HF_HUB_CACHE)"
    command = f" (`{download_command(file, cache_dir, hub_client())}`)" if file and cache_dir else ""
    return GuieError(
        f"model.pretrained: could not fetch the {params.pretrained!r} weights of model.name {params.name}"
        f"{' from hf.co/' + file.repo if file else ''} ({_root_cause(err)}); "
        "without network, set model.pretrained to a local "
        f"checkpoint file (open_clip .bin/.pt/.safetensors), or pre-fill {cache} on a machine with network"
        f"{command} and copy it here, then run with HF_HUB_OFFLINE=1"
    )


def materialise_weights(params: ModelParams, seed: int, out_path: Path, cache_dir: Path | None = None) -> None:
    """Write the backbone checkpoint the training stages load.

    `pretrained` "" -> a random init seeded by `seed`; an existing file -> that checkpoint;
    otherwise an open_clip pretrained tag, downloaded into `cache_dir` by open_clip (from the
    Hugging Face hub; a cache that already holds it needs no network).
    """
    check_model_name(params.name)
    check_exportable(params.name)  # before fetching gigabytes of weights for a tower the scorer cannot run
    torch.manual_seed(seed)
    pretrained = params.pretrained or None
    is_file = bool(pretrained) and Path(pretrained).is_file()
    if pretrained and not is_file:
        tags = [tag for name, tag in open_clip.list_pretrained() if name == params.name]
        if pretrained not in tags:
            raise GuieError(
                f"model.pretrained: {pretrained!r} is neither a file nor an open_clip tag for {params.name} ({tags})"
            )
    try:
        with quiet_open_clip():
            model = open_clip.create_model(
                params.name, pretrained=pretrained, cache_dir=str(cache_dir) if cache_dir else None
            )
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:
        if not pretrained:
            raise  # a random init has nothing to fetch or read: a bug, not an input problem
        if not is_file:
            raise _download_error(params, cache_dir, err) from None
        raise GuieError(
            f"model.pretrained: {pretrained} is not a {params.name} checkpoint open_clip can load "
            f"({_root_cause(err)}); point it at the right file"
        ) from None
    # the normalisation comes with a pretrained tag (SigLIP's is 0.5/0.5, not CLIP's) and open_clip
    # forgets it when the weights are reloaded from a file: it travels in the file
    mean, std = tower_mean_std(model.visual)
    torch_save({"state_dict": model.state_dict(), "image_mean": list(mean), "image_std": list(std)}, out_path)
