"""Tiny twins of the recipe presets (params/recipes/*.yaml): the same chain of stages, losses, TTA
and soup structure on the embedded default's synthetic data and tiny tower, so every preset's
pipeline runs end to end on a CPU in minutes (`guie twin`). A twin runs in its own scratch DVC
project (twins/<preset>/ by default), so the checkout's params.yaml, outputs and dvc.lock stay as
they are. A twin proves structure, not quality."""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import shutil
import subprocess
import textwrap
from pathlib import Path

from guie.data.presets import expand_preset
from guie.errors import GuieError
from guie.layout import Layout
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


def _plain(value):
    """A params dataclass's value as YAML data (tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def tiny_twin(preset: dict, default: dict, path: Path = Path("preset")) -> dict:
    """The twin of `preset` (a params dict, read from `path`): its stages (epochs 1, warm-ups <= 2 steps,
    unfreeze_from scaled to the tiny depth, patch strides to the tiny patch), losses, soups,
    augmentations and export.tta, on `default`'s (the embedded default's) synthetic sources, one per
    train source of the preset and named alike (so a stage's `sources` still apply), tiny tower and
    CPU settings. A preset that does not load is refused naming `path`."""
    from guie.params.load import parse_params

    parsed = parse_params(preset, path)
    twin = copy.deepcopy(default)
    twin["seed"] = parsed.seed
    train_src, pca_src = (copy.deepcopy(s) for s in default["data"]["sources"])
    train_src.update(instances_per_domain=6, views_per_instance=4, min_side=48, max_side=128, domains=["cars", "toys"])
    pca_src.update(min_side=48, max_side=128)  # PCA to 64 dims needs more than 64 images
    sources = [expand_preset(s) for s in preset["data"]["sources"]]
    names = [_source_name(s) for s in sources if s.get("role", "train") == "train"]
    twin["data"]["sources"] = [copy.deepcopy(dict(train_src, name=n, seed=i + 1)) for i, n in enumerate(names)]
    twin["data"]["sources"].append(pca_src)
    manifest = twin["data"]["manifest"]
    if parsed.data.manifest.selection_fraction:
        manifest["selection_fraction"] = 0.25  # enough classes of the tiny set to pick soups on
    real, tiny = parsed.model.name, _tiny_tower(parsed.model.name)
    scale_stride = _TINY_PATCH[tiny] / _patch(real)
    twin["model"].update(name=tiny, pretrained="", dropout=parsed.model.dropout)
    twin["model"]["patch_stride"] = round(parsed.model.patch_stride * scale_stride)
    twin["preprocess"] = _plain(dataclasses.asdict(parsed.preprocess))
    train = twin["train"]
    augment = _plain(dataclasses.asdict(parsed.train.augment))
    train.update(batch_size=16, augment=augment, final=parsed.train.final)
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
    twin["export"] = dict(default["export"], tta=parsed.export.tta)
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


# ---- the twin's scratch project ------------------------------------------------------------------

TWIN_HEADER = "# The tiny twin of "  # the first line of every twin's params.yaml: marks a folder guie twin may refresh
NOT_QUALITY = (
    "a twin proves the recipe's structure (its stages, losses, TTA and soups run end to end to a verified zip), "
    "not its quality: its mP@5, from a random tiny tower on a few synthetic images, is not meaningful"
)
# what the scratch project holds besides the twin's params.yaml: the pipeline and the sources its stages depend on
_PIPELINE, _PACKAGE, _PARAMS = "dvc.yaml", "guie", "params.yaml"
_EXAMPLE_OUT = Layout(Path(".")).twin("first")


def embedded_default(root: Path) -> tuple[dict, str, str]:
    """The embedded default (data, tiny tower and CPU settings a twin takes) as committed in `root`'s
    git checkout, so a working params.yaml switched to a recipe (or to a twin) does not leak into a
    twin; the working params.yaml where `root` is not a git checkout. Returns (data, text, label)."""
    try:
        proc = subprocess.run(
            ["git", "show", f"HEAD:./{_PARAMS}"], cwd=root, capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is not None and proc.returncode == 0:
        return _default_from(proc.stdout, f"{_PARAMS} as committed (git show HEAD:{_PARAMS})")
    path = root / _PARAMS
    if not path.is_file():
        raise GuieError(f"{path}: not found; run from the project root (or pass --root, or --default FILE)")
    return _default_from(path.read_text(encoding="utf-8"), str(path))


def default_from_file(path: Path) -> tuple[dict, str, str]:
    if not path.is_file():
        raise GuieError(f"{path}: --default file not found")
    return _default_from(path.read_text(encoding="utf-8"), str(path))


def _default_from(text: str, label: str) -> tuple[dict, str, str]:
    import yaml

    from guie.params.load import parse_params

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise GuieError(f"{label}: not valid YAML: {err}") from None
    if text.startswith(TWIN_HEADER):
        raise GuieError(f"{label}: is a twin (written by `guie twin`), not the embedded default; {_GET_DEFAULT}")
    params = parse_params(raw, Path(label))
    shape = [(s.type, s.role) for s in params.data.sources]
    if shape != [("synthetic", "train"), ("synthetic", "pca")]:
        raise GuieError(
            f"{label}: not the embedded default (a twin takes its synthetic train source and synthetic pca "
            f"source; its sources are {', '.join(s.name for s in params.data.sources)}); {_GET_DEFAULT}"
        )
    return raw, text, label


_GET_DEFAULT = "pass --default with the embedded default (e.g. `git show HEAD:params.yaml > default.yaml`)"


def _read_preset(path: Path) -> tuple[dict, str]:
    from guie.params.load import read_yaml

    if not path.exists():
        raise GuieError(f"{path}: preset not found (the presets are params/recipes/*.yaml)")
    if not path.is_file():
        raise GuieError(f"{path}: not a file; name a preset such as params/recipes/first.yaml")
    raw = read_yaml(path)
    return raw, path.read_text(encoding="utf-8")


def _check_out(out: Path, preset: Path, root: Path) -> None:
    """Refuse an -o that is not a new folder, an empty one or an earlier twin's project."""
    if out.exists() and out.resolve() == preset.resolve():
        raise GuieError(f"{out}: is the preset itself; -o names a folder for the twin's scratch project")
    if out.exists() and not out.is_dir():
        raise GuieError(f"{out}: is a file; -o names a folder for the twin's scratch project (e.g. {_EXAMPLE_OUT})")
    resolved, project = out.resolve(), root.resolve()
    if resolved == project or resolved in project.parents:
        raise GuieError(
            f"{out}: is the project itself (or holds it); a twin runs in a scratch folder so the project's "
            f"{_PARAMS}, outputs and dvc.lock stay as they are (e.g. -o {_EXAMPLE_OUT})"
        )
    if out.is_dir() and any(out.iterdir()) and not _is_twin_project(out):
        raise GuieError(
            f"{out}: is a folder that is neither empty nor a twin's project (its {_PARAMS} does not start with "
            f"{TWIN_HEADER.strip()!r}); choose a new folder"
        )


def _is_twin_project(folder: Path) -> bool:
    try:
        with open(folder / _PARAMS, encoding="utf-8") as f:
            return f.readline().startswith(TWIN_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def write_twin_project(preset: Path, out: Path, root: Path, default: Path | None = None) -> dict:
    """Write the preset's twin as a scratch DVC project in `out`: params.yaml (the twin, commented),
    the project's dvc.yaml and a copy of the guie sources its stages depend on, and a DVC repository
    of its own (no git), git-ignored wherever it lies. `dvc repro` inside it touches nothing outside.
    Running it again refreshes an earlier twin's project. Returns the twin's params."""
    raw, preset_text = _read_preset(preset)
    default_raw, default_text, _ = default_from_file(default) if default else embedded_default(root)
    for needed in (root / _PIPELINE, root / _PACKAGE):
        if not needed.exists():
            raise GuieError(f"{needed}: not found; run from the project root (or pass --root)")
    _check_out(out, preset, root)
    twin = tiny_twin(raw, default_raw, preset)
    text = render_twin(twin, preset, default_text, preset_text)
    from dvc.exceptions import DvcException

    try:
        _write_project(out, root, text)
    except (OSError, DvcException) as err:
        reason = getattr(err, "strerror", None) or err
        raise GuieError(f"{out}: cannot write the twin's project there: {reason}") from None
    return twin


def _write_project(out: Path, root: Path, text: str) -> None:
    from guie.atomic import write_text

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / ".gitignore", "# a twin's scratch project (guie twin): nothing here is committed\n*\n")
    staged = out / f".{_PACKAGE}.new"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(root / _PACKAGE, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.rmtree(out / _PACKAGE, ignore_errors=True)
    staged.rename(out / _PACKAGE)
    write_text(out / _PIPELINE, (root / _PIPELINE).read_text(encoding="utf-8"))
    write_text(out / _PARAMS, text)
    if not Layout(out).dvc_dir.is_dir():
        from dvc.repo import Repo

        dvc_log = logging.getLogger("dvc")
        level, _ = dvc_log.level, dvc_log.setLevel(logging.WARNING)  # not DVC's "Initialized" banner
        try:
            repo = Repo.init(str(out), no_scm=True)
        finally:
            dvc_log.setLevel(level)
        with repo, repo.config.edit() as conf:
            conf["core"]["analytics"] = False


# ---- the twin's params.yaml, with comments -------------------------------------------------------


def render_twin(twin: dict, preset: Path, default_text: str, preset_text: str) -> str:
    """The twin's params.yaml text: the embedded default's comments on the settings it keeps, the
    preset's on its stages; a value the twin changed loses its comment (a scaled stage value says
    what the preset has)."""
    from ruamel.yaml import YAML

    rt = _round_trip()
    base, stages = rt.load(default_text), YAML().load(preset_text)["train"]["stages"]
    _merge(stages, twin["train"]["stages"], note_preset=True)
    _drop_comment(base["train"], "stages")
    base["train"]["stages"] = stages
    _merge(base, twin, note_preset=False)
    base["data"].yaml_add_eol_comment("the twin's: one tiny synthetic set per train source of the preset", "sources")
    buf = io.StringIO()
    rt.dump(base, buf)
    body = buf.getvalue()
    while body.startswith("#"):  # the embedded default's header
        body = body.split("\n", 1)[1]
    header = [
        f"{TWIN_HEADER}{preset}, written by `guie twin`: its stages, losses, TTA and soups on synthetic",
        "data and a tiny random tower (epochs, warm-ups, unfreeze_from and patch strides scaled down).",
        *textwrap.wrap(f"Note: {NOT_QUALITY}.", 100),
        "Run it here: dvc repro (it touches nothing outside this folder).",
    ]
    return "".join(line if line.startswith("#") else f"# {line}" for line in (f"{h}\n" for h in header)) + body


def _round_trip():
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # one value per line, as written
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(float, _represent_float)
    return rt


def _flow_lists(value):
    """`value` with its lists of scalars written on one line ([cars, toys]), as params files write them."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(value, dict):
        return {k: _flow_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_flow_lists(v) for v in value]
        if all(not isinstance(v, dict | list) for v in items):
            items = CommentedSeq(items)
            items.fa.set_flow_style()
        return items
    return value


def _represent_float(representer, value: float):
    # YAML 1.1 readers (PyYAML: DVC, guie) take 1e-06 for a string: write 1.0e-06
    text = repr(value)
    if "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _drop_comment(node, key) -> None:
    node.ca.items.pop(key, None)
    child = node.get(key)
    if hasattr(child, "ca"):
        child.ca.comment = None


def _merge(node, plain: dict, note_preset: bool) -> None:
    """Make the commented mapping `node` hold `plain`'s data, keeping each unchanged value's comment."""
    for key in [k for k in node if k not in plain]:
        del node[key]
    for key, value in plain.items():
        old = node.get(key)
        if key in node and isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value, note_preset)
        elif key in node and old == value and isinstance(old, bool) == isinstance(value, bool):
            continue  # its comment still describes it
        else:
            _drop_comment(node, key)
            node[key] = _flow_lists(value)
            if note_preset and key in node and old is not None:
                node.yaml_add_eol_comment(f"the preset's: {old}", key)
