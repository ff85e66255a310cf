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
from support import REPO, resolved_stages

STAGES_DIR = REPO / "guie" / "stages"
# stage -> its entry module: guie/stages/<stage>.py (checked against the tree and guie/cli.py below)
STAGE_ENTRY = {
    path.stem: f"guie.stages.{path.stem}" for path in sorted(STAGES_DIR.glob("*.py")) if path.stem != "__init__"
}
# params.yaml section -> the module defining its fields, defaults and checks
SECTION_MODULE = {
    section: f"guie/params/{section}.py"
    for section in ("data", "preprocess", "model", "train", "pca", "export", "evaluate", "kaggle")
}
CLI_EXEMPT = {"guie/cli.py", "guie/__main__.py"}


def _module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_nodes(tree: ast.AST):
    """Every node, except inside `if TYPE_CHECKING:` blocks (annotations only; never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))


def _run_by_path(node: ast.AST, path: Path) -> str | None:
    """The module of a sibling script `path`'s code runs by path: `Path(__file__).with_name("child.py")`."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "with_name"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and str(node.args[0].value).endswith(".py")
        and (path.parent / node.args[0].value).is_file()
    ):
        return ".".join((path.parent / node.args[0].value).relative_to(REPO).with_suffix("").parts)
    return None


def _imported(path: Path) -> set[str]:
    """guie modules `path` imports anywhere (a `from pkg import name` counts pkg.name when it is a module),
    and the sibling scripts it runs by path."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if script := _run_by_path(node, path):
            found.add(script)
        elif isinstance(node, ast.Import):
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
    """dvc.yaml's stages; a templated one (`foreach` ... `do`) as its template."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def declared_sections(stage: dict) -> set[str]:
    return {key.split(".")[0] for key in stage.get("params", []) if isinstance(key, str)} & set(SECTION_MODULE)


def required_deps(stage: str, spec: dict) -> set[str]:
    """The guie files a stage's outputs can depend on: what its entry can import, and the modules
    defining the params sections it reads (their defaults fill what params.yaml leaves out)."""
    return set(closure(STAGE_ENTRY[stage])) | {SECTION_MODULE[s] for s in declared_sections(spec)}


def missing_deps(stages: dict) -> dict[str, list[str]]:
    """stage -> guie files it depends on that its deps do not cover."""
    return {
        stage: missing
        for stage in STAGE_ENTRY
        if (
            missing := sorted(
                p for p in required_deps(stage, stages[stage]) if not _covered(p, stages[stage].get("deps", []))
            )
        )
    }


def test_the_tree_shows_the_pipeline_one_module_per_stage():
    # guie/stages/<stage>.py for every dvc.yaml stage, and nothing else there
    assert set(STAGE_ENTRY) == set(_stages())


def test_every_stage_has_an_entry_module_that_its_cli_command_calls():
    cli = (REPO / "guie" / "cli.py").read_text()
    for entry in set(STAGE_ENTRY.values()):
        assert f"from {entry} import" in cli, entry


def test_every_module_a_stage_can_import_is_one_of_its_deps():
    assert missing_deps(_stages()) == {}


def test_no_stage_lists_a_code_dep_twice():
    for stage, spec in _stages().items():
        code = [d for d in spec.get("deps", []) if d.startswith("guie/")]
        assert sorted({d for d in code if code.count(d) > 1}) == [], stage


def test_stages_that_build_a_tower_depend_on_the_guie_model_configs():
    for stage, entry in STAGE_ENTRY.items():
        if "guie/model/backbone.py" in closure(entry):
            assert "guie/model/model_configs" in _stages()[stage]["deps"], stage


def test_training_never_depends_on_submission_code():
    # a change to verify, evaluate or submit code must never re-train a ViT-H for a day
    for stage in ("train",):
        deps = _stages()[stage]["deps"]
        assert not [
            d
            for d in deps
            if d.startswith(("guie/stages/verify", "guie/stages/evaluate", "guie/stages/export", "guie/kaggle/"))
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


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_no_stage_imports_another_stage(stage):
    others = {f"guie/stages/{name}.py" for name in STAGE_ENTRY} - {f"guie/stages/{stage}.py"}
    assert sorted(closure(STAGE_ENTRY[stage]) & others) == []


# Sections a stage imports without declaring their values, and why no value of them can change its outputs
UNDECLARED_SECTIONS = {
    # the Kaggle client's account and patience (username, timeouts, retries), never what it downloads
    "download": {"kaggle"},
}


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_a_stage_imports_only_the_params_sections_it_declares(stage):
    # guie/params/load.py composes every section (kaggle's too): the CLI's, never a stage's
    sections = {p for p in closure(STAGE_ENTRY[stage]) if p in SECTION_MODULE.values() or p == "guie/params/load.py"}
    allowed = {SECTION_MODULE[s] for s in declared_sections(_stages()[stage]) | UNDECLARED_SECTIONS.get(stage, set())}
    assert sorted(sections - allowed) == []


def test_dvc_lock_names_only_dvc_yamls_stages():
    # a stage removed from dvc.yaml (say, train_head before the chain) must leave dvc.lock too:
    # `dvc repro` keeps a stale entry, so the lock is regenerated when stages are renamed
    locked = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert sorted(locked - set(resolved_stages())) == []
