"""dvc.yaml's `params:` are a claim about the code: every param a stage reads is declared by that
stage (so changing it re-runs the stage), except run knobs that cannot change any output.

Reads are traced: each stage runs through its `guie` command on a tiny project while every params
dataclass records which of its fields are read, as dotted keys (`train.stages.head.epochs`: a
stage entry by its key in train.stages).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from support import REPO, tiny_params_dict, write_params
from typer.testing import CliRunner

from guie.cli import app
from guie.params import load as config
from guie.params import train as train_params

# guie.params.train.RUN_KNOBS: speed, memory and logging knobs, declared by no stage (changing one must
# not re-train a ViT-H)
RUN_KNOBS = train_params.RUN_KNOBS
STAGE_COMMANDS = {
    "download": ["download"],
    "weights": ["weights"],
    "manifest": ["manifest"],
    "train@head": ["train", "head"],
    "train@finetune": ["train", "finetune"],
    "pca": ["pca"],
    "export": ["export"],
    "evaluate": ["evaluate"],
}


def _dataclass_types(hint: object) -> list[type]:
    """The params dataclasses a field's type annotation can hold (through Annotated, Union, tuple)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return [hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Annotated:
        args = args[:1]  # the rest is metadata (validators), not types
    return [t for arg in args for t in _dataclass_types(arg)]


def _field_types(cls: type) -> dict[str, object]:
    """A params dataclass's fields and their evaluated annotations (only the dataclass fields:
    pydantic adds annotations of its own that do not evaluate)."""
    namespace = vars(sys.modules[cls.__module__])
    return {f.name: eval(f.type, namespace) if isinstance(f.type, str) else f.type for f in dataclasses.fields(cls)}


def params_classes() -> dict[type, str]:
    """Every params dataclass -> its dotted prefix ("" for Params itself)."""
    prefixes: dict[type, str] = {}
    todo: list[tuple[type, str]] = [(config.Params, "")]
    while todo:
        cls, prefix = todo.pop()
        if cls in prefixes:
            continue
        prefixes[cls] = prefix
        for name, hint in _field_types(cls).items():
            for child in _dataclass_types(hint):
                todo.append((child, f"{prefix}{name}."))
    return prefixes


@contextmanager
def recording_reads():
    """Record `prefix.field` for every leaf field read on any params dataclass meanwhile, except
    while `load_params` validates the whole file (those reads shape no output)."""
    reads: set[str] = set()
    validating = [False]
    patched = []
    for cls, prefix in params_classes().items():
        fields = {f.name for f in dataclasses.fields(cls)}
        nested = {name for name, hint in _field_types(cls).items() if _dataclass_types(hint)}
        original = cls.__getattribute__

        def getattribute(self, name, _original=original, _prefix=prefix, _fields=fields, _nested=nested):
            if not validating[0] and name in _fields and (name not in _nested or name == "sources"):
                reads.add(f"{keyed.get(id(self), _prefix)}{name}")
            return _original(self, name)

        cls.__getattribute__ = getattribute
        patched.append((cls, original))
    keyed: dict[int, str] = {}  # id of an entry of a keyed mapping (train.stages) -> its dotted prefix
    parse_params = config.parse_params

    def validated(*args, **kwargs):
        validating[0] = True
        try:
            params = parse_params(*args, **kwargs)
        finally:
            validating[0] = False
        _register_keyed(params, "", keyed)
        return params

    config.parse_params = validated
    try:
        yield reads
    finally:
        config.parse_params = parse_params
        for cls, original in patched:
            cls.__getattribute__ = original


def _register_keyed(obj: object, prefix: str, keyed: dict[int, str]) -> None:
    """Record the dotted prefix of every dataclass inside a keyed mapping (train.stages.<name>., and
    its nested sections), so a read names the entry it came from."""
    for f in dataclasses.fields(obj):
        value = object.__getattribute__(obj, f.name)  # not a traced read
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, item in items:
            if dataclasses.is_dataclass(item):
                child = f"{prefix}{f.name}." + (f"{key}." if key is not None else "")
                if key is not None or id(obj) in keyed:
                    keyed[id(item)] = child
                _register_keyed(item, child, keyed)


def _stage_spec(stage: str) -> dict:
    """dvc.yaml's spec of `stage`; `train@head` is the `train` template with ${key} = head."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    name, _, key = stage.partition("@")
    if not key:
        return stages[name]
    return yaml.safe_load(yaml.safe_dump(stages[name]["do"]).replace("${key}", key))


def _declared(stage: dict) -> list[str]:
    return [p for p in stage.get("params", []) if isinstance(p, str)]


def _covers(declared: list[str], key: str) -> bool:
    # a source's fields ("data.sources.seed") are covered by data.sources
    key = "data.sources" if key.startswith("data.sources.") else key
    return any(key == d or key.startswith(d + ".") for d in declared)


@pytest.fixture(scope="module")
def traced_project(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """A tiny project built stage by stage through the CLI; what each stage read."""
    root = tmp_path_factory.mktemp("traced")
    params = write_params(root / "params.yaml", tiny_params_dict())
    reads = {}
    for stage, command in STAGE_COMMANDS.items():
        with recording_reads() as seen:
            result = CliRunner().invoke(app, [*command, "--params", str(params), "--root", str(root)])
        assert result.exit_code == 0, (stage, result.output, result.exception)
        reads[stage] = set(seen)
    return root, reads


def test_the_tracer_sees_nested_reads_and_sources():
    with recording_reads() as seen:
        p = config.parse_params(tiny_params_dict())
        seen.clear()  # validation reads everything; only what follows counts
        _ = p.train.stages["head"].epochs, p.data.sources[0].name, p.seed, p.train.stages["finetune"].loss.scale
    assert seen == {
        "train.stages.head.epochs",
        "data.sources",
        "data.sources.name",
        "seed",
        "train.stages.finetune.loss.scale",
    }


@pytest.mark.parametrize("stage", list(STAGE_COMMANDS))
def test_every_param_a_stage_reads_is_declared(stage, traced_project):
    stage_reads = traced_project[1]
    declared = _declared(_stage_spec(stage))
    undeclared = sorted(k for k in stage_reads[stage] if not _covers(declared, k) and k not in RUN_KNOBS)
    assert undeclared == [], f"{stage} reads {undeclared}: declare them in dvc.yaml (or make them run knobs)"


@pytest.mark.parametrize("knob", sorted(RUN_KNOBS))
def test_no_stage_declares_a_run_knob(knob):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert [s for s, spec in stages.items() if _covers(_declared(spec.get("do", spec)), knob)] == []


def test_run_knobs_leave_the_trained_weights_byte_identical(traced_project, tmp_path_factory):
    """Every run knob at another value (train.processes: tests/test_train_distributed.py, within float
    tolerance); on this CPU machine channels_last and sync_every are no-ops by design."""
    root = traced_project[0]
    baseline = {name: (root / "models" / name).read_bytes() for name in ("head.pt", "finetune.pt")}
    raw = tiny_params_dict()
    knobs = {
        "num_workers": 2,
        "prepared_store": not raw["train"].get("prepared_store", True),
        "augment_on": "device",
        "checkpoint_every": 1,
        "sync_every": 1,
        "channels_last": not raw["train"].get("channels_last", True),
    }
    assert {f"train.{k}" for k in knobs} == RUN_KNOBS - {"train.processes"}
    raw["train"].update(knobs)
    params = write_params(tmp_path_factory.mktemp("knobs") / "params.yaml", raw)
    for command in (STAGE_COMMANDS["train@head"], STAGE_COMMANDS["train@finetune"]):
        result = CliRunner().invoke(app, [*command, "--fresh", "--params", str(params), "--root", str(root)])
        assert result.exit_code == 0, (command, result.output, result.exception)
    assert {name: (root / "models" / name).read_bytes() for name in baseline} == baseline
