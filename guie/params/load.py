"""Typed pipeline parameters: `params.yaml` is loaded once, validated strictly, into frozen dataclasses.

Validation happens before any work starts, so a typo in a key fails in a second, not after an
hour of training. Unknown keys, wrong types and missing sections are errors naming the key.
Imported by the CLI only: a stage imports the sections it reads (guie/params/<section>.py).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from guie.errors import GuieError
from guie.params.data import DataParams
from guie.params.evaluate import EvaluateParams
from guie.params.export import ExportParams
from guie.params.fields import SEED_MAX, STRICT, Seed
from guie.params.kaggle import KaggleParams
from guie.params.model import ModelParams
from guie.params.pca import PcaParams
from guie.params.preprocess import PreprocessParams
from guie.params.train import BACKBONE, AugmentParams, TrainParams

# At most this many values after YAML aliases are expanded (the default params.yaml has ~200): a
# few nested aliases in a 1 KB file ("billion laughs") would otherwise expand to billions.
MAX_YAML_VALUES = 100_000


@dataclass(frozen=True)
class Params:
    __pydantic_config__ = STRICT
    seed: Seed  # seeds data splits, init, shuffling and augmentation
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    pca: PcaParams
    export: ExportParams
    evaluate: EvaluateParams
    kaggle: KaggleParams = field(default_factory=KaggleParams)  # `guie submit`; slugs default from the username


_ADAPTER = TypeAdapter(Params)
_SOURCE_TYPES = {"synthetic", "folder", "url", "kaggle_dataset", "kaggle_competition"}


_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        # drop pydantic's discriminator tags from the path: data.sources.0.seed, not ...0.synthetic.seed
        parts = e["loc"]
        loc = ".".join(
            str(p) for i, p in enumerate(parts) if not (p in _SOURCE_TYPES and i and isinstance(parts[i - 1], int))
        )
        kind = e["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"  {loc}: unknown key")
            continue
        if kind == "missing":
            lines.append(f"  {loc}: missing key or section")
            continue
        if kind in _BOUND_WORDS:  # pydantic's own Field(ge=...) bounds, worded like bounds
            msg = f"must be {_BOUND_WORDS[kind]} {next(iter(e['ctx'].values()))}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if not isinstance(value, dict):  # a whole section's input says nothing; its message names the fields
            shown = repr(value)
            msg += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _cross_field_errors(p: Params) -> list[str]:
    """Rules between keys, each naming both keys and their values."""
    train, aug, errors = p.train, p.train.augment, []
    if train.batch_size % train.processes:
        errors.append(
            f"train.batch_size ({train.batch_size}) must be divisible by train.processes ({train.processes}): "
            "each process takes an equal share of the global batch"
        )
    if p.pca.dims > p.model.head_dim:
        errors.append(
            f"pca.dims ({p.pca.dims}) must be <= model.head_dim ({p.model.head_dim}): "
            "PCA cannot output more dims than the head"
        )
    for key, (low, high) in (("jpeg_quality", aug.jpeg_quality), ("cutout_area", aug.cutout_area)):
        if low > high:
            errors.append(f"train.augment.{key} ([{low:g}, {high:g}]) must be [low, high] with low <= high")
    errors += _stage_errors(p)
    if p.export.half and p.export.device == "cpu":
        errors.append(
            "export.half (true) needs export.device: cuda (got cpu): "
            "torch 1.11, the scorer's, has no float16 CPU kernels"
        )
    return errors


# a stage's name becomes models/<name>.pt and `guie train <name>`: these would collide
_RESERVED_STAGE_NAMES = {BACKBONE, "pca"}
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # it names files: 64 characters at most


def _stage_errors(p: Params) -> list[str]:
    """The chain's rules: names, order, what trains, and which data."""
    stages, errors = p.train.stages, []
    names = list(stages)
    if not names:
        return ["train.stages: empty; name at least one training stage"]
    train_sources = {s.name for s in p.data.sources if s.role == "train"}
    depths: dict[str, int] = {}
    for i, (name, stage) in enumerate(stages.items()):
        key = f"train.stages.{name}"
        depths[name] = depths.get(stage.from_, -1) + 1  # as training counts it: a first stage is 0
        errors += _seed_errors(p, key, stage, depths[name])
        if not _STAGE_NAME.fullmatch(name) or name in _RESERVED_STAGE_NAMES:
            errors.append(
                f"{key}: a stage name is lowercase letters, digits, _ and - (starting with a letter), "
                f"at most 64 characters, and not one of {sorted(_RESERVED_STAGE_NAMES)}"
            )
        if stage.from_ != BACKBONE and stage.from_ not in names[:i]:
            errors.append(
                f"{key}.from: {stage.from_!r} is neither {BACKBONE!r} nor a stage listed before it ({names[:i]})"
            )
        if (stage.tower == "blocks") != (stage.unfreeze_from is not None):
            errors.append(
                f"{key}: unfreeze_from ({stage.unfreeze_from}) goes with tower: blocks (got tower: {stage.tower}); "
                "set both, or neither"
            )
        if not stage.tower_trains and not stage.head_trains:
            errors.append(f"{key}: tower: frozen and head: frozen train nothing; unfreeze one of them")
        errors += _soup_errors(p, key, stage)
        errors += _wise_ft_errors(p, key, stage)
        unknown = sorted(set(stage.sources) - train_sources)
        if unknown:
            errors.append(f"{key}.sources: {unknown} are not train sources in data.sources ({sorted(train_sources)})")
    if p.train.final != names[-1]:
        errors.append(
            f"train.final ({p.train.final!r}) must name the last stage of train.stages ({names[-1]!r}): "
            "the last stage's model is the one exported"
        )
    return errors


_AUGMENT = TypeAdapter(AugmentParams)


def _filled_augment(p: Params, overrides: dict) -> str:
    """The augmentations an ingredient trains with, comparable: train.augment with its overrides,
    typed (a YAML list and a tuple alike); as given when invalid (refused below)."""
    merged = {**dataclasses.asdict(p.train.augment), **overrides}
    try:
        merged = dataclasses.asdict(_AUGMENT.validate_python(merged))
    except ValidationError:
        pass
    return repr(sorted(merged.items(), key=str))


def _seed_errors(p: Params, key: str, stage, depth: int) -> list[str]:
    """A run's seed is seed + the stage's depth in the chain (+ a soup ingredient's seed): in range."""
    extra = max((i.seed for i in stage.soup.ingredients), default=0) if stage.soup else 0
    if p.seed + depth + extra <= SEED_MAX:
        return []
    what = f" + {key}.soup.ingredients' largest seed ({extra})" if extra else ""
    return [
        f"seed ({p.seed}) + the stage's depth ({depth}){what} must be <= {SEED_MAX} (numpy's largest seed) "
        f"for {key}; lower seed"
    ]


def _soup_errors(p: Params, key: str, stage) -> list[str]:
    soup, errors = stage.soup, []
    if soup is None:
        return errors
    if len(soup.ingredients) < 2:
        errors.append(f"{key}.soup.ingredients: a soup needs at least two (got {len(soup.ingredients)})")
    # compared as they train: an override restating train.augment's value changes nothing
    seen = [(i.seed, _filled_augment(p, i.augment)) for i in soup.ingredients]
    twins = sorted({j for j, run in enumerate(seen) if seen.index(run) != j})
    if twins:
        errors.append(
            f"{key}.soup.ingredients: {twins} repeat an earlier ingredient (same seed, and the same augmentations "
            "once train.augment fills what an ingredient does not override)"
        )
    for j, ingredient in enumerate(soup.ingredients):
        try:
            _AUGMENT.validate_python({**dataclasses.asdict(p.train.augment), **ingredient.augment})
        except ValidationError as err:
            for e in err.errors():
                field_name = ".".join(str(x) for x in e["loc"])
                kind = "unknown key" if e["type"] == "unexpected_keyword_argument" else e["msg"]
                errors.append(f"{key}.soup.ingredients.{j}.augment.{field_name}: {kind}")
    if soup.method == "greedy" and not p.data.manifest.selection_fraction:
        errors.append(
            f"{key}.soup.method: greedy picks ingredients on the selection split; "
            "set data.manifest.selection_fraction (e.g. 0.05; it is 0) or soup.method: uniform"
        )
    return errors


def _wise_ft_errors(p: Params, key: str, stage) -> list[str]:
    alphas, errors = stage.wise_ft, []
    if not alphas:
        return errors
    if len(set(alphas)) != len(alphas):
        errors.append(f"{key}.wise_ft: {list(alphas)} repeats a mixing coefficient; list each once")
    if not p.data.manifest.selection_fraction:
        errors.append(
            f"{key}.wise_ft: the mixing coefficient is chosen on the selection split; "
            "set data.manifest.selection_fraction (e.g. 0.05; it is 0) or remove wise_ft"
        )
    return errors


def _old_train_layout(raw: dict, path: Path) -> None:
    """Refuse a params file of the two fixed stages (train.head / train.finetune, top-level loss),
    printing the equivalent chain."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    if not ({"head", "finetune"} & set(train) or "loss" in raw):
        return
    loss = raw.get("loss") or {}
    head, finetune = train.get("head") or {}, train.get("finetune") or {}
    chain = {
        "head": {"from": BACKBONE, "epochs": head.get("epochs", 5), "lr_head": head.get("lr", 1e-4)},
        "finetune": {
            "from": "head",
            "epochs": finetune.get("epochs", 4),
            "tower": "blocks",
            "unfreeze_from": finetune.get("unfreeze_from", 15),
            "lr_backbone": finetune.get("lr_backbone", 1e-7),
            "lr_head": finetune.get("lr_head", 1e-4),
        },
    }
    if "cached_views" in head:
        chain["head"]["cached_views"] = head["cached_views"]
    if loss:
        for entry in chain.values():
            entry["loss"] = loss
    text = yaml.safe_dump({"train": {"final": "finetune", "stages": chain}}, sort_keys=False)
    raise GuieError(
        f"{path}: train.head / train.finetune and the top-level loss section are the old two fixed stages; "
        "training is now a chain of named stages (see README, Training stages). The equivalent, to put "
        "under train: (and remove train.head, train.finetune and loss):\n" + text
    )


def _renamed_keys(raw: dict, path: Path) -> None:
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    if "cache_images" in train:
        raise GuieError(
            f"{path}: train.cache_images (the in-memory image cache) was replaced by train.prepared_store: "
            "images decoded and resized once, on disk, memory-mapped by every stage and process. "
            "Rename the key, or delete it (the store is on by default)"
        )


def _geometry_errors(p: Params) -> list[str]:
    """Every stage's image size and patch stride against the tower (built without weights, on the
    meta device: instant): each refusal names the key that set the value, the stage's own or the
    one it inherits through `from:`, down to preprocess.image_size and model.patch_stride."""
    from guie.model.backbone import GEOMETRY_KEYS, check_geometry, tower_skeleton

    try:
        tower = tower_skeleton(p.model.name)
    except GuieError as err:
        return [str(err)]
    first = ((p.preprocess.image_size, GEOMETRY_KEYS[0]), (p.model.patch_stride, GEOMETRY_KEYS[1]))
    resolved: dict[str, tuple[tuple[int, str], tuple[int, str]]] = {}
    errors = []
    for name, stage in p.train.stages.items():
        size, stride = resolved.get(stage.from_, first)
        if stage.image_size is not None:
            size = (stage.image_size, f"train.stages.{name}.image_size")
        if stage.patch_stride is not None:
            stride = (stage.patch_stride, f"train.stages.{name}.patch_stride")
        resolved[name] = (size, stride)
        try:
            check_geometry(tower, p.model.name, size[0], stride[0], (size[1], stride[1]))
        except GuieError as err:
            if str(err) not in errors:  # an inherited value is named once, by the key that set it
                errors.append(str(err))
    return errors


def parse_params(raw: object, path: Path = Path("params.yaml"), towers: bool = False) -> Params:
    """`raw` as Params, refused whole with every problem named. `towers`: also check each training
    stage's geometry against the tower (`guie train` does, before any stage trains; it imports open_clip)."""
    if not isinstance(raw, dict):
        raise GuieError(f"{path}: expected a mapping of sections at the top level")
    _old_train_layout(raw, path)
    _renamed_keys(raw, path)
    try:
        params = _ADAPTER.validate_python(raw)
    except ValidationError as err:
        raise GuieError(_format_errors(path, err)) from None
    crossed = _cross_field_errors(params)
    if towers and not crossed:
        crossed = _geometry_errors(params)
    if crossed:
        raise GuieError("\n".join([f"{path}: invalid parameters", *(f"  {line}" for line in crossed)]))
    names = [s.name for s in params.data.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GuieError(f"{path}: data.sources: duplicate source name(s) {dupes}")
    if not any(s.role == "train" for s in params.data.sources):
        raise GuieError(f"{path}: data.sources: no source with role 'train'")
    if not any(s.role == "pca" for s in params.data.sources):
        raise GuieError(f"{path}: data.sources: no source with role 'pca' (the PCA fitting set)")
    return params


def load_params(path: Path | str = "params.yaml", towers: bool = False) -> Params:
    path = Path(path)
    if not path.is_file():
        raise GuieError(f"{path}: parameters file not found (run from the project root or pass --params)")
    return parse_params(read_yaml(path), path, towers)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus two refusals before any object is built: a key given twice in
    one mapping (PyYAML keeps the last silently) and aliases that expand past a limit."""

    def checked_data(self, path: Path, limit: int) -> object:
        node = self.get_single_node()
        if node is None:
            return None
        self._check(path, node, limit)
        return self.construct_document(node)

    def _check(self, path: Path, root: yaml.Node, limit: int) -> None:
        """One pass over the composed node graph (an alias is the same node object again, so the
        graph is small even when its expansion is not): each node's expanded size is computed once
        from its children's, so a billion-laughs file is refused after visiting its few dozen nodes."""
        sizes: dict[int, int] = {}
        expanding: set[int] = set()
        stack: list[tuple[yaml.Node, bool, str]] = [(root, False, "")]
        while stack:
            node, children_done, where = stack.pop()
            if children_done:
                expanding.discard(id(node))
                sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
                if sizes[id(node)] > limit:
                    raise GuieError(
                        f"{path}: {where or 'the document'} holds over {limit:,} values once YAML aliases are expanded "
                        "(an alias bomb?); parameters need a few hundred: write them out instead of nesting aliases"
                    )
                continue
            if id(node) in sizes:
                continue
            if id(node) in expanding:
                raise GuieError(
                    f"{path}:{node.start_mark.line + 1}: a YAML alias refers to its own anchor ({where}); "
                    "remove the recursion"
                )
            expanding.add(id(node))
            stack.append((node, True, where))
            if not isinstance(node, yaml.MappingNode):
                stack += [
                    (child, False, f"{where}.{i}" if where else str(i)) for i, child in enumerate(_children(node))
                ]
                continue
            seen: dict[object, int] = {}
            for key_node, value_node in node.value:
                name = where
                if key_node.tag != "tag:yaml.org,2002:merge" and isinstance(
                    key_node, yaml.ScalarNode
                ):  # `<<:` merges may override
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    name = f"{where}.{key}" if where else str(key)
                    if key in seen:
                        raise GuieError(f"{path}:{line}: duplicate key {name} (first at line {seen[key]}); keep one")
                    seen[key] = line
                stack += [(key_node, False, name), (value_node, False, name)]


def read_yaml(path: Path, limit: int = MAX_YAML_VALUES) -> object:
    """A YAML file's data, refusing duplicate keys and alias expansions past `limit` values."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GuieError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    loader = _ParamsLoader(text)
    try:
        return loader.checked_data(path, limit)
    except yaml.YAMLError as err:
        raise GuieError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise GuieError(f"{path}: YAML nested too deeply to read; flatten it") from None
    finally:
        loader.dispose()
