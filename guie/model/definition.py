"""What defines a trained model, stored in its checkpoint so that every later stage rebuilds the
same model and the same preprocessing from the checkpoint, not from whatever params.yaml says now.

A later stage still reads the params it declares (model.name, preprocess.*) and refuses a
checkpoint trained with other values, naming both: a silently different resize would score a
model on inputs it never saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip

from guie.errors import GuieError
from guie.model.backbone import register_model_configs

if TYPE_CHECKING:
    from guie.params.model import ModelParams
    from guie.params.preprocess import PreprocessParams

# definition field -> the params.yaml key it comes from (what a mismatch message names)
PARAM_KEYS = {
    "name": "model.name",
    "image_size": "preprocess.image_size",
    "resize": "preprocess.resize",
    "patch_stride": "model.patch_stride",
    "head_dim": "model.head_dim",
    "dropout": "model.dropout",
}
# the fields pca and export check: the tower and the resize; the image size and patch stride are
# the final training stage's, whatever preprocess.image_size says (a stage may change them);
# head_dim and dropout are read from the checkpoint (its weights fix head_dim; dropout is off in eval mode)
EVAL_FIELDS = ("name", "resize")


@dataclass(frozen=True)
class ModelDefinition:
    name: str  # open_clip model name
    tower_config: dict  # open_clip's config of `name` (embed_dim, vision_cfg) when it was trained
    image_size: int  # the eval preprocessing's square side
    resize: str  # squash | shortest_side_crop
    patch_stride: int  # 0 = the patch size; smaller: overlapping patches (a denser grid)
    head_dim: int
    dropout: float

    def to_dict(self) -> dict:
        return asdict(self)


def tower_config(name: str) -> dict:
    """open_clip's config of the image tower `name` (a project JSON under guie/model/model_configs or
    one of open_clip's): editing it changes the model even under the same name."""
    register_model_configs()
    config = open_clip.get_model_config(name) or {}
    return {"embed_dim": config.get("embed_dim"), "vision_cfg": dict(config.get("vision_cfg", {}))}


def definition_from_params(model: ModelParams, preprocess: PreprocessParams) -> ModelDefinition:
    """The model training builds from params."""
    return ModelDefinition(
        name=model.name,
        tower_config=tower_config(model.name),
        image_size=preprocess.image_size,
        resize=preprocess.resize,
        patch_stride=model.patch_stride,
        head_dim=model.head_dim,
        dropout=model.dropout,
    )


def stored_definition(state: dict, checkpoint: Path) -> ModelDefinition:
    stored = state.get("definition")
    if not isinstance(stored, dict):
        raise GuieError(f"{checkpoint}: written by an older guie (no model definition inside); re-run training")
    try:
        return ModelDefinition(**stored)
    except TypeError:  # fields added or removed since it was written
        raise GuieError(f"{checkpoint}: written by another guie version ({sorted(stored)}); re-run training") from None


def check_definition(
    stored: ModelDefinition,
    model: ModelParams,
    preprocess: PreprocessParams,
    checkpoint: Path,
    fields: tuple[str, ...] = EVAL_FIELDS,
) -> ModelDefinition:
    """`stored`, after checking that the params in `fields` (those the calling stage reads) agree
    with it; each mismatch names the key, the checkpoint's value and params.yaml's."""
    wanted = {
        field: getattr(preprocess if key.startswith("preprocess.") else model, key.split(".")[1])
        for field, key in PARAM_KEYS.items()
        if field in fields
    }
    mismatches = [
        f"{PARAM_KEYS[field]}: the checkpoint was trained with {getattr(stored, field)!r}, "
        f"params.yaml says {wanted[field]!r}"
        for field in fields
        if getattr(stored, field) != wanted[field]
    ]
    if not mismatches and tower_config(stored.name) != stored.tower_config:
        mismatches.append(
            f"model.name: open_clip's config of {stored.name} is now {tower_config(stored.name)}, "
            f"the checkpoint was trained with {stored.tower_config}"
        )
    if mismatches:
        lines = "\n".join(f"  {m}" for m in mismatches)
        raise GuieError(
            f"{checkpoint}: does not match params.yaml:\n{lines}\n"
            "re-run training (`dvc repro`), or set params.yaml back to the checkpoint's values"
        )
    return stored
