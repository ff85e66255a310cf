"""dvc.yaml is a claim about the code: every guie module a stage's entry point can import is among
that stage's deps, so a code change re-runs every stage it can affect.

The import closure is static: every `import` / `from ... import` of a guie module anywhere in a
module (inside functions too), followed transitively, package `__init__` files included. The CLI
(`guie/cli.py`, `guie/__main__.py`) is exempt: it parses options and calls one library function.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml
from support import REPO

# stage -> the library module its `guie` command calls (checked against guie/cli.py below)
STAGE_ENTRY = {
    "download": "guie.data.sources",
    "weights": "guie.model.backbone",
    "manifest": "guie.data.manifest",
    "train_head": "guie.train",
    "train_finetune": "guie.train",
    "pca": "guie.pca",
    "export": "guie.export",
    "verify": "guie.verify",
    "evaluate": "guie.evaluate",
}
CLI_EXEMPT = {"guie/cli.py", "guie/__main__.py"}


def _module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """guie modules `path` imports anywhere (a `from pkg import name` counts pkg.name when it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "guie"}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "guie" and node.level == 0
        ):
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}" for alias in node.names if _module_file(f"{node.module}.{alias.name}")
            }
    return found


@cache
def closure(entry: str) -> frozenset[str]:
    """Repo-relative paths of every guie file importing `entry` can load."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for i in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:i]))
            if path is None:
                continue
            rel = path.relative_to(REPO).as_posix()
            if rel in seen:
                continue
            seen.add(rel)
            todo.extend(_imported(path))
    return frozenset(seen - CLI_EXEMPT)


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing_deps(stages: dict) -> dict[str, list[str]]:
    """stage -> guie files its entry can import that its deps do not cover."""
    return {
        stage: missing
        for stage, entry in STAGE_ENTRY.items()
        if (missing := sorted(p for p in closure(entry) if not _covered(p, stages[stage].get("deps", []))))
    }


def test_every_stage_has_an_entry_module_that_its_cli_command_calls():
    assert set(STAGE_ENTRY) == set(_stages())
    cli = (REPO / "guie" / "cli.py").read_text()
    for entry in set(STAGE_ENTRY.values()):
        assert f"from {entry} import" in cli, entry


def test_every_module_a_stage_can_import_is_one_of_its_deps():
    assert missing_deps(_stages()) == {}


def test_stages_that_build_a_tower_depend_on_the_guie_model_configs():
    for stage, entry in STAGE_ENTRY.items():
        if "guie/model/backbone.py" in closure(entry):
            assert "guie/model/model_configs" in _stages()[stage]["deps"], stage


def test_training_never_depends_on_submission_code():
    # a change to verify, evaluate or submit code must never re-train a ViT-H for a day
    for stage in ("train_head", "train_finetune"):
        deps = _stages()[stage]["deps"]
        assert not [
            d for d in deps if d.startswith(("guie/verify", "guie/evaluate", "guie/export", "guie/kaggle/submit"))
        ], stage


def _single_guie_deps() -> list[tuple[str, str]]:
    # modules only: guie/model/model_configs (open_clip's JSON configs of the guie towers) is data
    return [
        (stage, dep)
        for stage, spec in _stages().items()
        if stage in STAGE_ENTRY
        for dep in spec.get("deps", [])
        if dep.startswith("guie/") and dep.endswith(".py")
    ]


@pytest.mark.parametrize(("stage", "dep"), _single_guie_deps())
def test_removing_any_guie_dep_is_caught(stage, dep):
    stages = _stages()
    stages[stage]["deps"] = [d for d in stages[stage]["deps"] if d != dep]
    assert stage in missing_deps(stages), f"{dep} is not needed by {stage}: drop it from dvc.yaml"


# Still both a stage's entry and a library of others (the manifest table, the tower loader):
# they move below the stages next, and this set empties.
SHARED_ENTRIES = {"guie/data/manifest.py", "guie/model/backbone.py"}


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_no_stage_imports_another_stage(stage):
    entries = {e.replace(".", "/") + ".py" for e in STAGE_ENTRY.values()} - SHARED_ENTRIES
    own = STAGE_ENTRY[stage].replace(".", "/") + ".py"
    assert sorted((closure(STAGE_ENTRY[stage]) & entries) - {own}) == []
