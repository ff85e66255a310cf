"""What shapes an artifact, hashed: run knobs and the caps on unpacking are left out (and not read)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from guie.params.train import RUN_KNOBS

# sections whose values can change submission.zip (kaggle: where it is submitted; evaluate: a report)
ARTIFACT_SECTIONS = ("data", "preprocess", "model", "train", "pca", "export")


def shaping_values(section: object, prefix: str, skip: frozenset[str] | set[str]) -> object:
    """`asdict(section)` without the dotted keys in `skip`, reading only the fields it keeps."""
    if isinstance(section, (list, tuple)):
        return [shaping_values(item, prefix, skip) for item in section]
    if isinstance(section, dict):  # train.stages: keyed entries
        return {key: shaping_values(value, f"{prefix}.{key}", skip) for key, value in section.items()}
    if not dataclasses.is_dataclass(section):
        return section
    return {
        f.name: shaping_values(getattr(section, f.name), f"{prefix}.{f.name}", skip)
        for f in dataclasses.fields(section)
        if f"{prefix}.{f.name}" not in skip
    }


def artifact_hash(params) -> str:
    """The hash of every param that shapes submission.zip (recorded in export.json and submissions)."""
    skip = RUN_KNOBS | {"data.download"}
    payload = {name: shaping_values(getattr(params, name), name, skip) for name in ARTIFACT_SECTIONS}
    payload["seed"] = params.seed
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
