"""The run config: YAML (or a dict) -> a validated `RunConfig`, with errors users can act on.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key fails before any
work starts, naming the field, the bad value and the nearest valid choice. Method sections
(`sampler`, `balancer`, `model.architecture`, `model.adapter`) take a name or `{name: ...,
<hyperparameter>: ...}`; the names are checked against the registries and the
hyperparameters against each method's constructor (`polytask.method_options`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from polytask.balance import BALANCERS
from polytask.errors import ConfigError
from polytask.files import load_yaml, plain_name
from polytask.method_options import check_method_options
from polytask.models.adapters import ADAPTERS
from polytask.models.sharing import ARCHITECTURES
from polytask.models.spec import BackboneSpec
from polytask.registry import Registry
from polytask.tasks.catalog import CatalogRef, catalog_task, is_catalog_reference
from polytask.tasks.kinds import TASK_KINDS
from polytask.tasks.sampling import SAMPLERS
from polytask.tasks.spec import DataSpec, Task, coerce_data


class MethodConfig(BaseModel):
    """A registered method and its hyperparameters: `{name: temperature, temperature: 3}`."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _method(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class ModelConfig(BaseModel):
    """`model:` the backbone, the sharing architecture, and the auxiliary-loss weight."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backbone: BackboneSpec | None = Field(
        None, description="The shared encoder; a suite provides one when omitted."
    )
    architecture: MethodConfig = Field(
        default_factory=lambda: MethodConfig(name="hard_sharing"),
        description="Sharing architecture name, or {name: ..., hyperparameters}.",
    )
    head_hidden: int | None = Field(
        None, gt=0, description="Give each task head a hidden Linear-ReLU layer of this width."
    )
    auxiliary_loss_weight: float = Field(
        0.01, ge=0, description="Weight of the architecture's auxiliary loss (e.g. MoE balance)."
    )
    adapter: MethodConfig | None = Field(
        None,
        description="Multi-task adapter on a frozen Hugging Face backbone: a name or {name: "
                    "lora, r: 8, alpha: 16, dropout: 0.0, target_modules: [query, value], "
                    "<method options>}; only the adapter and the heads train. "
                    "See `polytask methods` (family adapter).",
    )

    @model_validator(mode="before")
    @classmethod
    def _architecture_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "architecture" in data:
            data = {**data, "architecture": _method(data["architecture"])}
        if isinstance(data, dict) and isinstance(data.get("adapter"), str):
            data = {**data, "adapter": _method(data["adapter"])}
        return data


class TrainConfig(BaseModel):
    """`train:` optimisation, evaluation, checkpoints and reproducibility."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lr: .inf is a mistake

    max_steps: int = Field(300, gt=0, description="Optimizer steps.")
    batch_size: int = Field(32, gt=0, description="Rows per task per step.")
    eval_batch_size: int = Field(128, gt=0, description="Rows per batch when evaluating.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw, or sgd (momentum 0.9): both with decoupled weight decay."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, le=1, description="Fraction of steps warming up.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warmup."
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Max gradient norm; null: no clip.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per step.")
    eval_every: int = Field(100, gt=0, description="Evaluate on validation every N steps.")
    patience: int | None = Field(
        None, gt=0, description="Stop after N evaluations without improvement; null: never."
    )
    checkpoint_every: int | None = Field(
        None, gt=0, description="Checkpoint every N steps; default: every evaluation."
    )
    keep_checkpoints: int = Field(2, gt=0, description="How many recent checkpoints to keep.")
    seed: int = Field(
        0, ge=0, lt=2**32,
        description="Seeds data order, initialisation, sampling and dropout (0 to 2**32 - 1).",
    )
    split_seed: int = Field(
        0, ge=0, lt=2**32,
        description="Seeds the carving of a missing validation/test split from train. "
        "Independent of `seed`, so runs over several seeds (e.g. a bench) are scored on the "
        "same test rows and their spread is the spread of training, not of the split.",
    )
    log_every: int = Field(
        10, gt=0, description="Write training losses every N steps (and, when the output is "
        "not a terminal, print a progress line every N steps).",
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of train carved as validation when there is none."
    )
    test_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of train carved as test when there is none."
    )
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1 ...")
    threads: int | None = Field(
        None, gt=0, description="torch CPU (intra-op) threads. null: one thread for a model "
        "under a million parameters (more threads only contend on such small work), torch's "
        "default otherwise."
    )
    num_workers: int = Field(
        0, ge=0, description="Worker processes that build training batches ahead of the step "
        "(gather rows, augment images); 0 builds them in the training process. Batches are "
        "the same either way, so resume stays exact. Worth it when augmentation or decoding "
        "is heavy next to the step; on a small CPU, 0 is usually fastest (see docs/vision.md)."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: run forward passes under bfloat16 autocast (weights, "
        "gradients and the balancer stay fp32)."
    )
    progress: bool = Field(
        True, description="Show progress: a spinner while loading, then a bar on a terminal; "
        "plain lines (every log_every steps) when the output is a file or a pipe.",
    )
    callbacks: list[str] = Field(
        default_factory=lambda: ["report"],
        description="Callbacks run alongside metrics.jsonl, e.g. [report, tensorboard, "
        "mlflow]; `polytask methods` lists them.",
    )
    nan_policy: Literal["stop", "skip"] = Field(
        "stop", description="On a NaN/inf loss: stop (keeping the last checkpoint) or skip "
        "the batch."
    )


class SuiteConfig(BaseModel):
    """`suite:` a built-in offline suite, e.g. `{name: text, train_size: 400}`."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TaskSplit(BaseModel):
    """`split:` the cross-task generalisation protocol (Super-NaturalInstructions): train on
    `train_tasks` only, then score `eval_tasks` zero-shot on their test split."""

    model_config = ConfigDict(extra="forbid")

    train_tasks: list[str] = Field(min_length=1, description="Tasks trained on (by name).")
    eval_tasks: list[str] = Field(
        min_length=1, description="Held-out tasks (by name): never trained on, evaluated "
        "zero-shot and reported under `held_out` in results.json. Their kind must serve an "
        "unseen task from a shared head (generation tasks share the LM head).",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> TaskSplit:
        both = sorted(set(self.train_tasks) & set(self.eval_tasks))
        if both:
            raise ValueError(f"{both} listed in both train_tasks and eval_tasks; a held-out "
                             "task is never trained on")
        return self

    def check(self, tasks: Sequence[Task]) -> None:
        """ConfigError unless every one of the run's `tasks` is listed once, and each
        held-out task's kind can serve a task it was not trained on."""
        names = [t.name for t in tasks]
        unknown = [n for n in [*self.train_tasks, *self.eval_tasks] if n not in names]
        if unknown:
            raise ConfigError(f"split: unknown task(s) {unknown}; the tasks are {names}")
        unlisted = [n for n in names if n not in self.train_tasks + self.eval_tasks]
        if unlisted:
            raise ConfigError(f"split: task(s) {unlisted} are in neither train_tasks nor "
                              "eval_tasks; list each task in one of them (or leave it out "
                              "with `only`)")
        serving = [k for k in TASK_KINDS.names() if TASK_KINDS.get(k).serves_unseen_tasks]
        for task in tasks:
            if task.name in self.eval_tasks and task.kind not in serving:
                raise ConfigError(
                    f"split.eval_tasks: task {task.name!r} is of kind {task.kind!r}, whose head "
                    "is the task's own: held out, it is never trained and would answer at "
                    "random. Hold out only tasks of a kind whose head serves unseen tasks ("
                    f"{', '.join(serving) or 'none is registered'}; e.g. kind: generation, "
                    "which shares the LM head), or train this task.")


def _catalog_tasks(items: Any) -> Any:
    """`tasks:` items naming a catalog entry (`glue/rte`, `{catalog: glue/rte, ...}`) become
    the tasks the catalog declares (`polytask.tasks.catalog`)."""
    if not isinstance(items, list):
        return items
    expanded = []
    for i, item in enumerate(items):
        if not is_catalog_reference(item):
            expanded.append(item)
            continue
        try:
            expanded.append(catalog_task(item))
        except ConfigError as error:
            raise ValueError(f"tasks.{i}: {error}") from None
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: "
                                 f"{e['msg'].removeprefix('Value error, ')}"
                                 for e in error.errors())
            raise ValueError(f"tasks.{i} (catalog task {item!r}): {problems}. The keys of a "
                             f"catalog task are: {', '.join(CatalogRef.model_fields)}") from None
    return expanded


class RunConfig(BaseModel):
    """A whole run: tasks and their data, model, sampler, balancer, training settings."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str | None = Field(
        None, description="Run name, used for the default run dir runs/<name>: letters, digits, "
        "_, - and . (no /, \\ or ..).",
    )
    suite: SuiteConfig | None = Field(
        None, description="A built-in suite providing tasks, data and backbone."
    )
    data: DataSpec | Any = Field(
        None, description="The shared dataset read by tasks without their own `data`."
    )
    tasks: list[Task] = Field(
        default_factory=list, description="The tasks to learn jointly: task sections, or "
        "catalog names (glue/rte, squad; `polytask tasks list`), or {catalog: NAME, "
        "overrides...}.")
    split: TaskSplit | None = Field(
        None, description="Cross-task generalisation: {train_tasks: [...], eval_tasks: [...]}; "
        "see docs/tasks.md.")
    only: list[str] | None = Field(
        None, description="Train only these tasks (by name) of `tasks` or of the suite."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampler: MethodConfig = Field(
        default_factory=lambda: MethodConfig(name="all"),
        description="Task sampler name or {name: ..., hyperparameters}.",
    )
    balancer: MethodConfig = Field(
        default_factory=lambda: MethodConfig(name="ew"),
        description="Balancer name or {name: ..., hyperparameters}.",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    baselines: Literal["auto", "cached", "none"] = Field(
        "cached",
        description="Single-task baselines for Δm%: auto = train missing ones first; "
        "cached = use those `polytask baseline` recorded; none = skip.",
    )
    baselines_dir: str = Field("runs/baselines", description="Where baselines are cached.")

    _data = field_validator("data", mode="before")(classmethod(lambda cls, v: coerce_data(v)))
    _catalog = field_validator("tasks", mode="before")(
        classmethod(lambda cls, v: _catalog_tasks(v)))

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        """The name becomes the default run folder, so it must be a plain name."""
        return None if value is None else plain_name(value, "run name")

    @model_validator(mode="before")
    @classmethod
    def _method_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("sampler", "balancer", "suite"):
                if key in data:
                    data[key] = _method(data[key])
        return data

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if not self.tasks and self.suite is None:
            raise ValueError("declare `tasks` (a list) or a built-in `suite`")
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"tasks: task names must be unique; repeated: {duplicates}. Rename one of them."
            )
        for i, task in enumerate(self.tasks):
            _known(TASK_KINDS, task.kind, f"tasks.{i}.kind")
        _check_tabular_inputs(self)
        _known(SAMPLERS, self.sampler.name, "sampler.name")
        _known(BALANCERS, self.balancer.name, "balancer.name")
        _known(ARCHITECTURES, self.model.architecture.name, "model.architecture.name")
        sections = {"sampler": self.sampler, "balancer": self.balancer,
                    "model.architecture": self.model.architecture}
        if self.model.adapter is not None:
            _known(ADAPTERS, self.model.adapter.name, "model.adapter.name")
            sections["model.adapter"] = self.model.adapter
        check_method_options(sections)
        balancer = BALANCERS.get(self.balancer.name)
        sampler = SAMPLERS.get(self.sampler.name)
        if balancer.needs_all_tasks and not sampler.feeds_all_tasks:
            all_samplers = [n for n in SAMPLERS.names() if SAMPLERS.get(n).feeds_all_tasks]
            raise ValueError(
                f"balancer {self.balancer.name!r} needs every task at every step, but sampler "
                f"{self.sampler.name!r} feeds one task per step; use sampler "
                f"{' or '.join(map(repr, all_samplers))}, or a loss weighting such as 'ew'."
            )
        return self

    def dump(self) -> dict[str, Any]:
        """The config as plain data (in-memory datasets are written as a placeholder)."""
        out = self.model_dump(mode="json", exclude_none=True, fallback=lambda v: "<in-memory>")
        return out


def _check_tabular_inputs(config: RunConfig) -> None:
    """A tabular backbone reads the same input columns for every task: say so when the config
    loads, not after the single-task baselines have trained."""
    backbone = config.model.backbone
    tasks = [t for t in config.tasks if config.only is None or t.name in config.only]
    if backbone is None or backbone.type != "mlp" or not tasks:
        return
    first = tasks[0]
    for task in tasks[1:]:
        if task.input_columns != first.input_columns:
            same_table = task.data is None and first.data is None
            raise ValueError(
                f"tasks.{task.name}.input: {task.input_columns} differs from "
                f"tasks.{first.name}.input {first.input_columns}; a tabular backbone "
                "(model.backbone.type: mlp) reads the same input columns for every task"
                f"{' (and tasks on one dataset share inputs)' if same_table else ''}. List "
                "the same columns, in the same order, for every task, or train them in "
                "separate runs."
            )


def _known(registry: Registry[Any], name: str, field: str) -> None:
    if name not in registry:
        raise ValueError(f"{field}: {registry.unknown_message(name)}")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `--set a.b=c` overrides (values parsed as YAML; list items by index).

    Returns a new dict: sections on the path are copied, so `data` and its nested dicts and
    lists are never changed."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {error}") from None
        node: Any = data
        parts = key.split(".")
        try:
            for part in parts[:-1]:
                slot: Any = int(part) if isinstance(node, list) else part
                child = node[slot] if isinstance(node, list) else node.get(part)
                if isinstance(child, str) and part in {
                    "sampler", "balancer", "architecture", "suite"
                }:
                    child = {"name": child}
                if isinstance(child, dict | list):
                    child = type(child)(child)
                elif not isinstance(node, list):
                    child = {}
                node[slot] = child
                node = child
            if isinstance(node, list):
                node[int(parts[-1])] = value
            else:
                node[parts[-1]] = value
        except (ValueError, IndexError, AttributeError, TypeError):
            raise ConfigError(
                f"--set {item!r}: {key!r} does not lead to a settable field; list items are "
                "indexed from 0 (e.g. tasks.0.metric=macro_f1)"
            ) from None
    return data


def _field_names(model: type[BaseModel], location: Sequence[Any]) -> list[str]:
    """Field names valid at `location` (to suggest the nearest to an unknown key)."""
    current: Any = model
    for part in location:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            for c in candidates:
                for arg in getattr(c, "__args__", ()):
                    if isinstance(arg, type) and issubclass(arg, BaseModel):
                        current = arg
    return list(getattr(current, "model_fields", {}))


def _model_names() -> set[str]:
    """Names of the pydantic models (pydantic may put them in an error's location)."""
    names, todo = set(), [BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__name__ not in names:
                names.add(sub.__name__)
                todo.append(sub)
    return names


def format_errors(error: ValidationError, model: type[BaseModel] = RunConfig) -> str:
    """One line per problem: `field: message (got VALUE). Did you mean ...?`"""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        location = [p for i, p in enumerate(loc)  # drop union tags such as 'DataSpec', but
                    if i == len(loc) - 1 or p not in _model_names()]  # never the user's key
        message = item["msg"].removeprefix("Value error, ")
        if not location:
            lines.append(message)
            continue
        field = ".".join(str(p) for p in location)
        if item["type"] == "extra_forbidden":
            valid = _field_names(model, location[:-1])
            close = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            message = f"unknown key.{hint} Valid keys here: {', '.join(valid)}"
            lines.append(f"{field}: {message}")
            continue
        value = item.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        lines.append(f"{field}: {message}{shown}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _config_text(path: Path) -> str:
    """The text of the config file `path`, or a ConfigError saying why it cannot be read."""
    shown = repr(str(path))
    if not path.exists():
        raise ConfigError(f"config file {shown} does not exist")
    if path.is_dir():
        yaml_files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        yaml_files.sort(key=lambda p: p.stem != "config")  # a run dir holds config.yaml
        example = str(yaml_files[0] if yaml_files else path / "config.yaml")
        there = "" if yaml_files else f" (there is no YAML file in {shown})"
        raise ConfigError(f"config {shown} is a folder, not a YAML file; give the YAML file, "
                          f"e.g. {example!r}{there}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {shown} is not UTF-8 text ({error.reason} at byte "
                          f"{error.start}); give a YAML file saved as UTF-8") from None
    except PermissionError:
        raise ConfigError(f"config file {shown} cannot be read: permission denied; give "
                          f"yourself read access (chmod u+r {path}) or copy it somewhere "
                          "readable") from None
    except OSError as error:
        raise ConfigError(f"config file {shown} cannot be read: {error.strerror}; check the "
                          "file and the disk it is on") from None


def with_data_paths_under(config: RunConfig, base: Path) -> RunConfig:
    """`config` with the relative local paths of its data (shared and per task) made
    absolute against the folder `base`."""
    data = config.data.resolved_against(base) if isinstance(config.data, DataSpec) \
        else config.data
    tasks = [t.model_copy(update={"data": t.data.resolved_against(base)})
             if isinstance(t.data, DataSpec) else t for t in config.tasks]
    return config.model_copy(update={"data": data, "tasks": tasks})


def load_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (),
    base_dir: str | Path | None = None,
) -> RunConfig:
    """Read and validate a run config from a YAML path or a dict; `overrides` as `--set`.

    Relative data paths (`data.path`, `files`) are made absolute against `base_dir`, which
    defaults to the config file's folder (so a config works from any current folder); a dict
    without `base_dir` keeps them relative, read against the current folder."""
    base = Path(base_dir).absolute() if base_dir is not None else None
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        base = base or path.absolute().parent
        try:
            data = load_yaml(_config_text(path)) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_errors(error)) from None
    if not isinstance(source, Mapping):
        _check_every_task_has_data(config, Path(source))
    return config if base is None else with_data_paths_under(config, base)


def _check_every_task_has_data(config: RunConfig, path: Path) -> None:
    """A config file must say where every task's rows come from. (A config built in Python
    may leave that to `Trainer(config, data=...)`; the pipeline checks it there.)"""
    for i, task in enumerate(config.tasks):
        if task.data is None and config.data is None:
            raise ConfigError(
                f"{path}: tasks.{i} ({task.name}) has no `data` and the run has no shared "
                "`data`; give the task a `data:` section or add a top-level one.")
