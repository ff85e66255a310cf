"""Tiny twins of the recipe presets (params/recipes/*.yaml): the same chain of stages, losses, TTA
and soup structure on the embedded default's synthetic data and tiny tower, so every preset's
pipeline runs end to end on a CPU in minutes (`guie twin`)."""

from __future__ import annotations

import copy

from guie.data.presets import expand_preset
from guie.model.definition import tower_config

_TINY_DEPTH = 4  # guie-tiny-vit's and guie-tiny-siglip's resblocks
_TINY_PATCH = {"guie-tiny-vit": 32, "guie-tiny-siglip": 16}
_PRESET_PATCH_FALLBACK = 14  # every top recipe's tower has 14 px patches


def _source_name(entry: dict) -> str:
    return entry.get("name") or entry.get("preset") or entry["type"]


def _tiny_tower(name: str) -> str:
    # SigLIP's kind (timm, attention-pool head) has its own tiny stand-in
    return "guie-tiny-siglip" if "SigLIP" in name else "guie-tiny-vit"


def _depth(name: str) -> int:
    cfg = tower_config(name)["vision_cfg"]
    return int(cfg.get("layers") or 27)  # timm SigLIP towers have no `layers`: SO400M has 27 blocks


def _patch(name: str) -> int:
    return int(tower_config(name)["vision_cfg"].get("patch_size") or _PRESET_PATCH_FALLBACK)


def tiny_twin(preset: dict, default: dict) -> dict:
    """The twin of `preset` (a params dict): its stages (epochs 1, warm-ups <= 2 steps,
    unfreeze_from scaled to the tiny depth, patch strides to the tiny patch), losses, soups,
    augmentations and export.tta, on `default`'s (params.yaml's) synthetic sources, one per train
    source of the preset and named alike (so a stage's `sources` still apply), tiny tower and CPU settings."""
    twin = copy.deepcopy(default)
    twin["seed"] = preset["seed"]
    train_src, pca_src = (copy.deepcopy(s) for s in default["data"]["sources"])
    train_src.update(instances_per_domain=6, views_per_instance=4, min_side=48, max_side=128, domains=["cars", "toys"])
    pca_src.update(min_side=48, max_side=128)  # PCA to 64 dims needs more than 64 images
    sources = [expand_preset(s) for s in preset["data"]["sources"]]
    names = [_source_name(s) for s in sources if s.get("role", "train") == "train"]
    twin["data"]["sources"] = [copy.deepcopy(dict(train_src, name=n, seed=i + 1)) for i, n in enumerate(names)]
    twin["data"]["sources"].append(pca_src)
    manifest = twin["data"]["manifest"]
    if preset["data"]["manifest"].get("selection_fraction"):
        manifest["selection_fraction"] = 0.25  # enough classes of the tiny set to pick soups on
    real, tiny = preset["model"]["name"], _tiny_tower(preset["model"]["name"])
    scale_stride = _TINY_PATCH[tiny] / _patch(real)
    twin["model"].update(name=tiny, pretrained="", dropout=preset["model"]["dropout"])
    twin["model"]["patch_stride"] = round(preset["model"]["patch_stride"] * scale_stride)
    twin["preprocess"] = dict(preset["preprocess"])
    train = twin["train"]
    train.update(batch_size=16, augment=copy.deepcopy(preset["train"]["augment"]), final=preset["train"]["final"])
    train["stages"] = {}
    for name, stage in preset["train"]["stages"].items():
        stage = copy.deepcopy(stage)
        stage["epochs"] = min(stage["epochs"], 1)
        if "warmup_steps" in stage:
            stage["warmup_steps"] = min(stage["warmup_steps"], 2)
        if stage.get("unfreeze_from") is not None:
            stage["unfreeze_from"] = round(stage["unfreeze_from"] * _TINY_DEPTH / _depth(real))
        if stage.get("patch_stride"):
            stage["patch_stride"] = round(stage["patch_stride"] * scale_stride)
        train["stages"][name] = stage
    twin["export"] = dict(default["export"], tta=preset["export"].get("tta", "none"))
    twin["evaluate"] = dict(default["evaluate"], bootstrap=50)
    return twin


# what a twin keeps of each stage: everything but sizes (epochs, warm-up, depth, geometry)
_SCALED = {"epochs", "warmup_steps", "unfreeze_from", "image_size", "patch_stride"}


def structure(params: dict) -> dict:
    """What a preset and its twin share: each stage's chain, what trains, optimiser, schedule,
    losses, data sources and soup; the TTA; the final stage."""
    return {
        "final": params["train"]["final"],
        "tta": params["export"].get("tta", "none"),
        "stages": {
            name: {k: v for k, v in stage.items() if k not in _SCALED}
            for name, stage in params["train"]["stages"].items()
        },
    }
