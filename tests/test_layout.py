"""guie/layout.py is the one home of every project-relative path: no module under guie/ spells one
itself, and the paths dvc.yaml names are exactly Layout's."""

from __future__ import annotations

import ast
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml
from support import REPO, resolved_stages

from guie.layout import Layout

ROOT = PurePosixPath("/project")
SLOT = "SLOT"  # stands for the stage or source name a Layout method takes

# words that are also stage, section or argument names in the code ("manifest", "weights", "data"...):
# code may use them as plain strings, never as a path component (see _path_operands)
AMBIGUOUS = {
    "data",
    "raw",
    "weights",
    "manifest",
    "models",
    "pca",
    "submission",
    "metrics",
    "submit",
    "hub",
    "evaluate",
}

# (file, fragment): a literal in that file containing the fragment may look like a layout path
ALLOWED = {
    ("guie/kaggle/notebook.py", "submission.zip"),  # the file the Kaggle notebook writes, on Kaggle
    ("guie/stages/verify.py", "submission.zip"),  # a hint: the file a directory given to `guie verify` may hold
    ("guie/params/data.py", "names the directory data/raw/<name>/"),  # prose in a validation message
}


def _layout_paths(layout: Layout) -> dict[str, Path]:
    """Every path Layout knows: its properties, and its methods called with SLOT."""
    out = {}
    for name, member in vars(Layout).items():
        if name.startswith("_") or name == "root":
            continue
        if isinstance(member, property):
            out[name] = getattr(layout, name)
        elif callable(member):
            out[f"{name}({SLOT})"] = getattr(layout, name)(SLOT)
    return out


def _relative_parts() -> list[tuple[str, ...]]:
    return [PurePosixPath(p).relative_to(ROOT).parts for p in _layout_paths(Layout(Path(ROOT))).values()]


def _components() -> set[str]:
    return {part for parts in _relative_parts() for part in parts if part != SLOT}


def _path_patterns() -> set[str]:
    """Regexes of every multi-component relative path and its prefixes ("data/raw",
    "checkpoints/<any>/last.pt"), SLOT matching any one component."""
    out = set()
    for parts in _relative_parts():
        pattern = [r"[^/\s]+" if part == SLOT else re.escape(part) for part in parts]
        for n in range(2, len(pattern) + 1):
            out.add(r"(?<![\w.])" + "/".join(pattern[:n]) + r"(?![\w.])")
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                ids.add(id(first.value))
    return ids


def _path_operands(tree: ast.AST) -> set[int]:
    """String constants used to build a path: `x / "c"`, `"c" / x`, Path("c"), p.joinpath("c"), p.with_name("c")."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            ids |= {id(side) for side in (node.left, node.right) if isinstance(side, ast.Constant)}
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in {"Path", "PurePath", "PurePosixPath", "joinpath", "with_name", "join"}:
                ids |= {id(arg) for arg in node.args if isinstance(arg, ast.Constant)}
    return ids


def layout_literals(source: str, filename: str) -> list[str]:
    """The string constants in `source` (code, not docstrings) that spell a path of the project layout."""
    tree = ast.parse(source, filename=filename)
    docstrings, operands = _docstrings(tree), _path_operands(tree)
    components, patterns = _components(), _path_patterns()
    distinctive = components - AMBIGUOUS
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
            continue
        text = node.value
        hit = (
            text in distinctive  # "features.pt", "checkpoints", ".guie": a layout name, whatever it is used for
            or any(re.search(p, text) for p in patterns)  # "data/raw", also inside a message or help text
            or (id(node) in operands and {t for t in text.split("/") if t} & components)  # root / "data"
        )
        if hit and not any(file == filename and fragment in text for file, fragment in ALLOWED):
            found.append(f"{filename}:{node.lineno}: {text!r}")
    return found


def test_no_module_outside_layout_spells_a_layout_path():
    found = []
    for path in sorted((REPO / "guie").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel != "guie/layout.py":
            found += layout_literals(path.read_text(), rel)
    assert found == [], "use guie.layout.Layout for these paths:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "code",
    [
        'root / "data" / "raw"',
        'root / "checkpoints" / stage / "last.pt"',
        'checkpoint.with_name("features.pt")',
        'root / ".guie" / "submit"',
        'metrics / "evaluate.json"',
        'weights.parent / "hub"',
        'Path("submission/submission.zip")',
        'f"see {root}/data/downloads/{name}"',
        'help = "Ignore checkpoints/train_head/last.pt and start over."',
    ],
)
def test_the_scan_catches_a_spelled_path(code):
    assert layout_literals(code, "guie/x.py")


@pytest.mark.parametrize(
    "code",
    [
        'require_inputs("pca", (manifest, "manifest"), (weights, "weights"))',
        'shaping_values(params.train, "train", skip)',
        'tar.extract(member, dest, filter="data")',
        'def f():\n    """Writes data/raw/<name>/ and checkpoints/<stage>/last.pt."""',
        'work_dir / "notebook"',
    ],
)
def test_the_scan_leaves_plain_words_and_docstrings_alone(code):
    assert layout_literals(code, "guie/x.py") == []


# ---- dvc.yaml names Layout's paths -------------------------------------------------------------


def _dvc_paths(spec: dict, key: str) -> set[str]:
    """A stage's non-code paths under `key` (deps / outs / metrics / plots), as written."""
    out = set()
    for entry in spec.get(key, []):
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        if not path.startswith("guie/"):
            out.add(path)
    return out


def _expected(layout: Layout) -> dict[str, dict[str, set[Path]]]:
    """stage -> {deps, outs}: the Layout members each stage reads and writes."""
    return {
        "download": {"deps": set(), "outs": {layout.raw}},
        "weights": {"deps": set(), "outs": {layout.weights}},
        "manifest": {"deps": {layout.raw}, "outs": {layout.manifest, layout.rejected}},
        "train@head": {"deps": {layout.manifest, layout.weights}, "outs": {layout.trained("head")}},
        "train@finetune": {
            "deps": {layout.trained("head"), layout.manifest, layout.weights},
            "outs": {layout.trained("finetune")},
        },
        "pca": {"deps": {layout.trained("finetune"), layout.manifest, layout.weights}, "outs": {layout.pca}},
        "export": {
            "deps": {layout.trained("finetune"), layout.pca, layout.weights},
            "outs": {layout.submission, layout.export_info},
        },
        "verify": {"deps": {layout.submission}, "outs": set()},
        "evaluate": {"deps": {layout.submission, layout.manifest, layout.weights}, "outs": set()},
    }


def _stages() -> dict:
    return resolved_stages()


def test_dvc_yaml_deps_and_outs_are_layouts_paths():
    layout = Layout(Path("."))
    stages = _stages()
    expected = _expected(layout)
    assert set(stages) == set(expected)
    for stage, spec in stages.items():
        for key in ("deps", "outs"):
            assert {Path(p) for p in _dvc_paths(spec, key)} == expected[stage][key], (stage, key)


def test_dvc_yaml_metrics_and_plots_lie_in_the_stages_metrics_folder():
    layout = Layout(Path("."))
    for stage, spec in _stages().items():
        for key in ("metrics", "plots"):
            for path in map(Path, _dvc_paths(spec, key)):
                if stage == "verify":
                    assert path == layout.verify_report
                else:
                    assert path.is_relative_to(layout.metrics(stage.replace("@", "_"))), (stage, key, path)
    assert layout.evaluate_report.as_posix() in _dvc_paths(_stages()["evaluate"], "metrics")
    assert layout.verify_report.as_posix() in _dvc_paths(_stages()["verify"], "metrics")


def test_dvc_yaml_verify_command_names_layouts_paths():
    layout = Layout(Path("."))
    cmd = _stages()["verify"]["cmd"].split()
    assert cmd[cmd.index("verify") + 1] == layout.submission.as_posix()
    assert cmd[cmd.index("--report") + 1] == layout.verify_report.as_posix()


def test_every_dvc_path_is_a_layout_path_and_the_rest_stay_outside_dvc():
    """Layout paths that dvc.yaml does not track (resume checkpoints, download cache, submit work)
    must lie outside every DVC output: DVC deletes a stage's outputs before running it."""
    layout = Layout(Path("."))
    stages = _stages()
    tracked = {
        Path(p)
        for spec in stages.values()
        for key in ("deps", "outs", "metrics", "plots")
        for p in _dvc_paths(spec, key)
    }
    known = set(_layout_paths(layout).values())
    known |= {layout.trained(name) for name in yaml.safe_load((REPO / "params.yaml").read_text())["train"]["stages"]}
    metrics_dirs = {layout.metrics(stage.replace("@", "_")) for stage in stages}
    assert {p for p in tracked if p not in known and not any(p.is_relative_to(m) for m in metrics_dirs)} == set()
    outs = {Path(p) for spec in stages.values() for key in ("outs", "metrics", "plots") for p in _dvc_paths(spec, key)}
    untracked = {
        name: p
        for name, p in _layout_paths(layout).items()
        if p not in tracked and not any(p.is_relative_to(m) for m in metrics_dirs)
    }
    assert untracked, "the scan found no untracked Layout path"
    for name, path in untracked.items():
        assert not any(path.is_relative_to(out) for out in outs), f"Layout.{name} ({path}) lies inside a DVC output"


def test_paths_outside_dvc_and_what_readme_commands_write_are_git_ignored():
    """What guie writes outside DVC (download and hub caches, resume checkpoints, submit's work,
    twins) and `dvc plots show`'s page never show in `git status`."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    layout = Layout(Path("."))
    paths = [
        layout.downloads("src") / "file.zip",
        layout.weights_hub / "models--x" / "blob",
        layout.checkpoint("train_head"),
        layout.feature_cache("train_head"),
        layout.submit_work / "dataset" / "x",
        layout.twin("first") / "params.yaml",
        Path("dvc_plots") / "index.html",
    ]
    for path in paths:
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path.as_posix()], cwd=REPO, check=False)
        assert proc.returncode == 0, f"{path} is not git-ignored"
