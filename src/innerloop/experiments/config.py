"""Experiment configuration: a TOML (or JSON) file plus dotted overrides, validated by pydantic.

Unknown keys are an error that lists the valid keys at that level; a wrong type is an error that
names the key. Sections whose content depends on a ``name`` (task, model, rule) are validated
against the config class registered for that name.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)
from pydantic.fields import FieldInfo

from innerloop import plugins, registry
from innerloop.errors import UserError
from innerloop.executors import resolve as resolve_executor
from innerloop.experiments.components import (  # noqa: F401  (the built-in sections; re-exported)
    Conv4Config,
    ImagesConfig,
    LinearConfig,
    LinNetConfig,
    LogRegConfig,
    MLPConfig,
    ResNet12Config,
    SineConfig,
    Strict,
)
from innerloop.geometry import GEOMETRIES
from innerloop.rules import RULES


class ConfigError(UserError):
    """A user error in a config file or override; the message is meant to be printed as is."""


# ---- named sections: discriminated unions over what is registered ------------------------------
def _union(kind: str) -> Any:
    """The config classes registered for ``kind`` as one union, told apart by their ``name``."""
    members = tuple(spec.config for spec in registry.table(kind).values())
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="name")]  # noqa: UP007


TaskConfig = _union("task")
ModelConfig = _union("model")
RuleConfigUnion = _union("rule")
GeometryConfigUnion = _union("geometry")
#: Config field -> registry kind of the sections rebuilt when something new is registered
_SECTIONS = {"task": "task", "model": "model", "rule": "rule", "geometry": "geometry"}


def _registered(kind: str, extra: tuple[str, ...] = ()):
    """A validator: the value must be a name registered for ``kind`` (checked when validating, so
    names registered after import count)."""

    def check(v: str) -> str:
        valid = [*extra, *registry.names(kind)]
        if v not in valid:
            raise ValueError(f"unknown {kind} {v!r}; expected one of {', '.join(valid)}")
        return v

    return check


class AlgorithmConfig(Strict):
    name: Annotated[str, AfterValidator(_registered("algorithm"))] = "maml"
    inner_steps: PositiveInt = 1
    eval_inner_steps: PositiveInt | None = None  # default: inner_steps
    first_order: bool = False  # fomaml is maml with first_order = true
    adapt_norm: bool = True  # false: norm scales/shifts are meta-learned but not inner-adapted (ALFA, MAML++)
    # inner-adapt only the parameters under these name prefixes (e.g. ["body.2"], ["head"]); None: all that the
    # algorithm adapts. KFO's layer study. Names are those of model.named_parameters().
    adapt_only: list[str] | None = None
    # keep the parameters under these name prefixes out of the inner loop (still meta-learned)
    freeze: list[str] | None = None
    # memory controls (meta-training only; evaluation needs no graph): second-order terms through only
    # the last k inner steps (None: all; 0 is first order), and activation checkpointing across inner
    # steps (loop and threads paths; recomputes each step's forward in the backward pass)
    second_order_steps: NonNegativeInt | None = None
    checkpoint: bool = False
    # what norm layers with running statistics (a user's torch BatchNorm) use in evaluation: "batch" (the task's
    # batch statistics, transductive, the papers' protocol) or "running" (the stored buffers); meta-training always
    # uses batch statistics and never updates the buffers. Our backbones keep no running statistics.
    norm_stats: Literal["batch", "running"] = "batch"
    # ANIL: the submodule adapted in the inner loop (default: the model's "head", else its last nn.Linear)
    head: str | None = None


class TrainConfig(Strict):
    iterations: NonNegativeInt = 70000
    meta_batch: PositiveInt = 25
    optimizer: Literal["adam", "sgd"] = "adam"
    meta_lr: PositiveFloat = 1e-3
    # meta-lr of the update rule's and the geometry's own parameters (the learned optimizer); None: meta_lr
    rule_meta_lr: PositiveFloat | None = None
    momentum: NonNegativeFloat = 0.0  # sgd only (MetaMiDA's released code: 0.9 with nesterov on miniImageNet)
    nesterov: bool = False  # sgd only, needs momentum > 0
    weight_decay: NonNegativeFloat = 0.0  # L2 added to the meta-gradient, as torch.optim.SGD / Adam do
    lr_step: PositiveInt | None = None  # every lr_step iterations multiply every meta-lr by lr_gamma (StepLR)
    lr_gamma: PositiveFloat = 0.1
    clip_grad_norm: PositiveFloat | None = None  # clip the meta-gradient's global norm (off by default)
    prefetch: NonNegativeInt = 2  # meta-batches sampled ahead in a background thread (0: none)
    val_every: PositiveInt = 1000
    val_tasks: PositiveInt = 100
    val_seed: int = 1
    log_every: PositiveInt = 100
    checkpoint_every: PositiveInt = 1000
    seed: int = 0
    execution: Annotated[str, AfterValidator(_registered("executor", ("auto",)))] = "auto"  # or an executor's name
    vmap_chunk: PositiveInt | None = None  # vmap path: meta-train this many tasks at a time (memory knob)
    device: str = "cpu"  # cpu, cuda, cuda:N, ... or auto (cuda when available, else cpu)
    dtype: Literal["float32", "float64"] = "float32"
    # metric sinks: metrics.jsonl ("jsonl") is always written; "csv" adds metrics.csv, "tensorboard" adds
    # tensorboard/ (the optional extra innerloop[tensorboard]); see experiments/sinks.py
    log: list[Literal["jsonl", "csv", "tensorboard"]] = ["jsonl"]


class EvalConfig(Strict):
    tasks: PositiveInt = 600
    seed: int = 2
    batch: PositiveInt = 50  # tasks evaluated together (memory knob; results do not depend on it)


class Config(Strict):
    name: str = "run"
    plugins: list[str] = []  # modules imported before validation: a user's rules, models, datasets (innerloop.plugins)
    task: TaskConfig = Field(default_factory=SineConfig)
    model: ModelConfig = Field(default_factory=MLPConfig)
    rule: RuleConfigUnion = Field(default_factory=lambda: RULES["sgd"].config())
    geometry: GeometryConfigUnion = Field(default_factory=lambda: GEOMETRIES["euclidean"].config())
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


_built_at = registry.version()


# ---- validation with readable errors -----------------------------------------------------------
def _union_members(annotation: Any) -> list[type[BaseModel]] | None:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Union:
        members = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return members or None
    return None


def _submodel(annotation: Any, value: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = _union_members(annotation)
    if members and isinstance(value, dict):
        for m in members:
            if m.model_fields["name"].default == value.get("name"):
                return m
    return None


def _default_name(field: Any, members: list[type[BaseModel]]) -> Any:
    """The name a section without one takes: that of the field's default (e.g. ``mlp`` for the model)."""
    if field.default_factory is not None:
        return getattr(field.default_factory(), "name", None) or members[0].model_fields["name"].default
    return members[0].model_fields["name"].default


def _unknown_keys(data: dict, cls: type[BaseModel], path: str, out: list[str]) -> None:
    for key, value in data.items():
        field = cls.model_fields.get(key)
        if field is None:
            valid = ", ".join(cls.model_fields)
            where = f"[{path.rstrip('.')}]" if path else "the top level"
            out.append(f"unknown key '{path}{key}' (valid keys in {where}: {valid}; drop it with ~{path}{key})")
            continue
        members = _union_members(field.annotation)
        if members and isinstance(value, dict) and "name" not in value:
            value["name"] = _default_name(field, members)  # a section without a name takes the default one
        sub = _submodel(field.annotation, value)
        if sub is not None and isinstance(value, dict):
            _unknown_keys(value, sub, f"{path}{key}.", out)


def _format_validation(err: ValidationError, data: dict) -> str:
    lines = []
    for e in err.errors():
        # drop union tags from the location: keep only elements that are keys of the data
        loc, node = [], data
        for part in e["loc"]:
            if isinstance(node, dict) and part in node:
                loc.append(str(part))
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int):
                loc.append(str(part))
                node = node[part] if part < len(node) else None
        key = ".".join(loc) or "<config>"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"{key}: {e['msg']}{got}")
    return "; ".join(lines)


def _refresh() -> None:
    """Rebuild the named sections of :class:`Config` if anything was registered since they were
    built (a user's rule, model or task family registered after import is then valid)."""
    global _built_at
    if registry.version() == _built_at:
        return
    for field, kind in _SECTIONS.items():
        Config.model_fields[field] = FieldInfo.merge_field_infos(Config.model_fields[field], annotation=_union(kind))
    Config.model_rebuild(force=True)
    _built_at = registry.version()



def _non_finite(data: Any, path: str, out: list[str]) -> None:
    # TOML reads inf and nan as floats, and pydantic's number types accept them (rule.lr = inf)
    if isinstance(data, float) and not math.isfinite(data):
        out.append(f"{path}: must be a finite number (got {data})")
    elif isinstance(data, dict):
        for k, v in data.items():
            _non_finite(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _non_finite(v, f"{path}.{i}", out)


def validate(data: dict) -> Config:
    """The :class:`Config` of ``data`` (a raw dict, left unchanged), or one ConfigError listing every problem."""
    data = copy.deepcopy(data)  # sections without a name get the default one filled in below
    if isinstance(data.get("plugins"), list) and all(isinstance(m, str) for m in data["plugins"]):
        plugins.load(data["plugins"])  # a plugin's names are valid in the rest of the config
    _refresh()
    problems: list[str] = []
    _non_finite(data, "", problems)
    _unknown_keys(data, Config, "", problems)
    if problems:
        raise ConfigError("config error: " + "; ".join(problems))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError("config error: " + _format_validation(err, data)) from None
    if cfg.algorithm.name == "fomaml":
        cfg.algorithm.first_order = True
    a = cfg.algorithm
    if a.second_order_steps is not None and a.first_order:
        raise ConfigError("config error: algorithm.second_order_steps needs second-order meta-gradients; "
                          f"it cannot be combined with {'fomaml' if a.name == 'fomaml' else 'first_order = true'}")
    if a.checkpoint and cfg.train.execution != "auto" and not resolve_executor(cfg.train.execution).supports_checkpoint:
        able = [n for n in registry.names("executor") if resolve_executor(n).supports_checkpoint]
        raise ConfigError(f"config error: algorithm.checkpoint does not run on the {cfg.train.execution!r} executor; "
                          f"set train.execution to one of {', '.join(map(repr, able))} or 'auto'")
    t = cfg.train
    if t.optimizer != "sgd" and (t.momentum or t.nesterov):
        raise ConfigError("config error: train.momentum and train.nesterov are options of train.optimizer = 'sgd' "
                          f"(got optimizer {t.optimizer!r})")
    if t.nesterov and not t.momentum:
        raise ConfigError("config error: train.nesterov needs train.momentum > 0")
    return cfg


# ---- files and overrides ----------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML value (numbers, booleans, lists); fall back to a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` (or ``--section.key=value``) overrides to a raw config dict, in order;
    ``~section.key`` drops a key (e.g. the old rule's options after ``rule.name=...``)."""
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if text.startswith("~"):
            _drop(data, text[1:].strip(), item)
            continue
        if "=" not in text:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, value = text.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value.strip())
    return data


def _drop(data: dict, key: str, item: str) -> None:
    node: Any = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"override {item!r}: the config has no key {key!r} to drop")
    del node[parts[-1]]


def read_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot parse config file {p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} holds a JSON {type(data).__name__}, not a table of settings")
    return data


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data = read_file(path) if path is not None else {}
    return validate(apply_overrides(data, list(overrides or [])))


def to_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys present in both configs whose values differ (a key only one side has is an option added
    or removed since, whose default keeps the old behaviour)."""
    out = []
    for k in sorted(set(a) & set(b)):
        key = f"{prefix}{k}"
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            out += config_diff(a[k], b[k], key + ".")
        elif a[k] != b[k]:
            out.append(key)
    return out
