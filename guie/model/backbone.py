"""The open_clip image tower: project model configs, weight materialisation and loading.

Real weights (an open_clip pretrained tag) and the embedded default (a seeded random init) both
end up as one checkpoint file under data/weights/, and both load through open_clip's own
checkpoint path, so the tiny default exercises exactly the code a real run uses.
"""

from __future__ import annotations

import gc
import logging
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
from torch import nn

from guie.atomic import torch_save
from guie.config import ModelParams
from guie.errors import GuieError

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make the project's configs (e.g. `guie-tiny-vit`) known to open_clip by name."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def _check_model_name(name: str) -> None:
    register_model_configs()
    if name not in open_clip.list_models():
        raise GuieError(f"model.name: unknown open_clip model {name!r} (e.g. 'ViT-H-14' or 'guie-tiny-vit')")


@contextmanager
def _quiet() -> Iterator[None]:
    """open_clip warns and logs (at ERROR, through the root logger) before it raises; the error
    guie raises instead says it all, in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _root_cause(err: BaseException) -> str:
    """The innermost exception of a chain, in one short line (open_clip wraps the hub's error twice)."""
    seen = {id(err)}
    while (inner := err.__cause__ or err.__context__) is not None and id(inner) not in seen:
        err = inner
        seen.add(id(err))
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text if len(text) <= 100 else text[:97] + '...'}"


def _download_error(params: ModelParams, cache_dir: Path | None, err: Exception) -> GuieError:
    repo = ((open_clip.get_pretrained_cfg(params.name, params.pretrained) or {}).get("hf_hub") or "").rstrip("/")
    cache = str(cache_dir) if cache_dir else "the Hugging Face hub cache ($HF_HUB_CACHE)"
    return GuieError(
        f"model.pretrained: could not fetch the {params.pretrained!r} weights of model.name {params.name}"
        f"{' from hf.co/' + repo if repo else ''} ({_root_cause(err)}); without network, set model.pretrained to a local "
        f"checkpoint file (open_clip .bin/.pt/.safetensors), or pre-fill {cache} on a machine with network"
        f"{f' (huggingface-cli download {repo} --cache-dir {cache})' if repo else ''} and copy it here, then run with HF_HUB_OFFLINE=1"
    )


def materialise_weights(params: ModelParams, seed: int, out_path: Path, cache_dir: Path | None = None) -> None:
    """Write the backbone checkpoint the training stages load.

    `pretrained` "" -> a random init seeded by `seed`; an existing file -> that checkpoint;
    otherwise an open_clip pretrained tag, downloaded into `cache_dir` by open_clip (from the
    Hugging Face hub; a cache that already holds it needs no network).
    """
    _check_model_name(params.name)
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
        with _quiet():
            model = open_clip.create_model(
                params.name, pretrained=pretrained, cache_dir=str(cache_dir) if cache_dir else None
            )
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:
        if not pretrained:
            raise  # a random init has nothing to fetch or read: a bug, not an input problem
        if not is_file:
            raise _download_error(params, cache_dir, err) from None
        raise GuieError(
            f"model.pretrained: {pretrained} is not a {params.name} checkpoint open_clip can load ({_root_cause(err)}); point it at the right file"
        ) from None
    torch_save({"state_dict": model.state_dict()}, out_path)


def load_tower(name: str, checkpoint: Path, image_size: int | None = None) -> nn.Module:
    """Build the open_clip model from `checkpoint` and keep only its image tower; with `image_size`
    (preprocess.image_size), check the tower takes images of that size (its position embeddings do)."""
    _check_model_name(name)
    if not checkpoint.is_file():
        raise GuieError(f"{checkpoint}: backbone weights not found; run `dvc repro weights` (or `guie weights`) first")
    model = open_clip.create_model(name, pretrained=str(checkpoint))
    visual = model.visual
    del model
    gc.collect()
    expected = getattr(visual, "image_size", None)
    side = expected[0] if isinstance(expected, (tuple, list)) else expected
    if image_size is not None and side is not None and image_size != side:
        raise GuieError(
            f"preprocess.image_size: {image_size} does not fit model.name {name}, which takes {side} px images; set preprocess.image_size: {side}"
        )
    return visual


def tower_mean_std(tower: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(tower, "preprocess_cfg", {}) or {}
    return tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))


def tower_dim(tower: nn.Module) -> int:
    return int(tower.output_dim)


def unfreeze_from(tower: nn.Module, index: int) -> list[nn.Parameter]:
    """Freeze the tower, then unfreeze resblocks[index:] and everything after them.

    Returns the trainable parameters (the backbone's learning-rate group)."""
    blocks = tower.transformer.resblocks
    if not 0 <= index <= len(blocks):
        raise GuieError(f"train.finetune.unfreeze_from: {index} is outside 0..{len(blocks)} for this tower")
    for p in tower.parameters():
        p.requires_grad_(False)
    trainable = [p for block in blocks[index:] for p in block.parameters()]
    for module in (getattr(tower, "ln_post", None),):
        if module is not None:
            trainable += list(module.parameters())
    if isinstance(getattr(tower, "proj", None), nn.Parameter):
        trainable.append(tower.proj)
    for p in trainable:
        p.requires_grad_(True)
    return trainable
