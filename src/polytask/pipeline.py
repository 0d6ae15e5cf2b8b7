"""From a validated config to prepared data and a model, before any training starts.

Everything that can fail because of the user's input (files, columns, labels, backbone)
fails here, with a message naming the field and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from polytask.config import ModelConfig, RunConfig
from polytask.errors import ConfigError, DataError
from polytask.models.adapters import ADAPTERS, Adapter
from polytask.models.backbones import (
    HFEncoder,
    MLPBackbone,
    build_tabular,
    build_text,
    text_inputs,
)
from polytask.models.generative import build_generative, check_sharing
from polytask.models.images import BatchTransform, ImageInputs
from polytask.models.inputs import TabularInputs, TextInputs, content_hash
from polytask.models.model import MultiTaskModel
from polytask.models.sharing import ARCHITECTURES
from polytask.models.spec import IMAGE_BACKBONES, BackboneSpec
from polytask.models.vision import build_vision
from polytask.suites import load_suite
from polytask.tasks.data import (
    SHARED,
    PreparedData,
    Source,
    SplitData,
    align_token_labels,
    check_columns,
    check_token_lengths,
    load_source,
)
from polytask.tasks.fingerprint import data_fingerprint
from polytask.tasks.kinds import TASK_KINDS, TaskKind
from polytask.tasks.spec import Task


@dataclass
class Resolved:
    """The run's tasks, shared data and backbone after expanding a suite."""

    tasks: list[Task]
    shared_data: Any
    backbone: BackboneSpec


def resolve(config: RunConfig) -> Resolved:
    """Expand `suite:` into tasks/data/backbone; explicit config sections win."""
    tasks, shared, backbone = list(config.tasks), config.data, config.model.backbone
    if config.suite is not None:
        suite = load_suite(config.suite.name, **config.suite.options)
        tasks = tasks or list(suite.tasks)
        shared = shared if shared is not None else suite.data
        backbone = backbone or suite.backbone
    if config.only is not None:
        known = [t.name for t in tasks]
        unknown = [n for n in config.only if n not in known]
        if unknown:
            raise ConfigError(f"only: unknown task(s) {unknown}; the tasks are {known}")
        tasks = [t for t in tasks if t.name in config.only]
    if config.split is not None:
        config.split.check(tasks)
    if backbone is None:
        raise ConfigError("model.backbone: required (e.g. {type: hf, name: minilm-l6} or "
                          "{type: mlp}) unless a `suite` provides one")
    return Resolved(tasks, shared, backbone)


def source_data(resolved: Resolved) -> tuple[dict[str, Any], dict[str, str]]:
    """The data of each source (the shared dataset, or a task's own) and each task's source."""
    data: dict[str, Any] = {}
    task_source: dict[str, str] = {}
    for task in resolved.tasks:
        if task.data is None:
            if resolved.shared_data is None:
                raise ConfigError(
                    f"tasks.{task.name}: the task has no `data` and the run has no shared "
                    "`data`; give the task a `data:` section, add a top-level one, or pass "
                    "the rows in Python: Trainer(config, data={task name: DataFrame})")
            data[SHARED] = resolved.shared_data
            task_source[task.name] = SHARED
        else:
            data[task.name] = task.data
            task_source[task.name] = task.name
    return data, task_source


def data_fingerprints(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Each source's fingerprint (file hashes, hub id + revision or table hash), without
    loading it: what `splits.json` records and `polytask eval` checks."""
    return {name: data_fingerprint(data) for name, data in source_data(resolve(config))[0].items()}


def _load_sources(
    config: RunConfig, resolved: Resolved,
    carved_rows: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
) -> tuple[dict[str, Source], dict[str, str]]:
    train = config.train
    data, task_source = source_data(resolved)
    sources: dict[str, Source] = {}
    for task in resolved.tasks:
        name = task_source[task.name]
        if name not in sources:
            sources[name] = load_source(
                name, data[name], train.split_seed, train.validation_fraction,
                train.test_fraction, "data" if name == SHARED else f"tasks.{name}.data",
                (carved_rows or {}).get(name))
        check_columns(task, sources[name])
    return sources, task_source


def _source_record(source: Source, split_seed: int) -> dict[str, Any]:
    """What `splits.json` says of a source: rows per split, the carving (split seed and the
    original train rows of each carved split, before `max_rows`) and the data's fingerprint."""
    return {"rows": {s: len(f) for s, f in source.frames.items()}, "carved": source.carved,
            "split_seed": split_seed, "carved_rows": source.carved_rows, **source.origin}


def _source_inputs(tasks: list[Task], task_source: dict[str, str]) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {}
    for task in tasks:
        source = task_source[task.name]
        if source in columns and columns[source] != task.input_columns:
            raise ConfigError(
                f"tasks.{task.name}.input: {task.input_columns} differs from another task on "
                f"the same dataset ({columns[source]}); tasks sharing a dataset share inputs"
            )
        columns[source] = task.input_columns
    return columns


def warn_label_leakage(tasks: list[Task], task_source: dict[str, str]) -> None:
    """Warn when a label column of a task is an input on the same table: the tasks reading
    it would see that task's answers (label leakage)."""
    for owner in tasks:
        for column in owner.label_columns:
            readers = [t.name for t in tasks if task_source[t.name] == task_source[owner.name]
                       and column in t.input_columns]
            if readers:
                warnings.warn(
                    f"column {column!r} is the label of task {owner.name!r} and an input of "
                    f"task(s) {readers} on the same dataset, so they see its answers (label "
                    "leakage); remove it from `input` unless that is what you mean.",
                    UserWarning, stacklevel=2)


def build_encoder(spec: BackboneSpec, sources: dict[str, Source],
                  inputs_of: dict[str, list[str]], backbone: nn.Module | None = None,
                  ) -> tuple[nn.Module, TextInputs | TabularInputs]:
    """The backbone and the input encoder that feeds it (fitted on training rows). With a
    `backbone` of the user's, only the input encoder is built (no weights are loaded)."""
    if spec.type == "hf":
        return build_text(spec) if backbone is None else (backbone, text_inputs(spec))
    if spec.type in IMAGE_BACKBONES:
        return _build_images(spec, sources, inputs_of, backbone)
    tabular = TabularInputs(spec.impute, spec.impute_value or 0.0, spec.missing_indicator,
                            spec.categorical)
    column_sets = {tuple(c) for c in inputs_of.values()}
    if len(column_sets) > 1:
        raise ConfigError(f"a tabular backbone (model.backbone.type: mlp) reads the same input "
                          f"columns for every task; got {sorted(column_sets)}. List the same "
                          "columns, in the same order, for every task, or train them in "
                          "separate runs.")

    columns = list(next(iter(column_sets)))
    train = pd.concat([s.frames["train"][columns] for s in sources.values()], ignore_index=True)
    tabular.fit(train, columns)
    return (build_tabular(spec, tabular) if backbone is None else backbone), tabular


def _build_images(spec: BackboneSpec, sources: dict[str, Source],
                  inputs_of: dict[str, list[str]], backbone: nn.Module | None,
                  ) -> tuple[nn.Module, ImageInputs]:
    """The image backbone and its `ImageInputs`, fitted on the first source's train rows."""
    column_sets = {tuple(c) for c in inputs_of.values()}
    if len(column_sets) > 1:
        raise ConfigError(f"an image backbone (model.backbone.type: {spec.type}) reads the same "
                          f"image column for every task; got {sorted(column_sets)}. Name the "
                          "same column for every task, or train them in separate runs.")
    inputs = ImageInputs(spec.image)
    inputs.fit(next(iter(sources.values())).frames["train"], list(next(iter(column_sets))))
    return (build_vision(spec, inputs) if backbone is None else backbone), inputs


def _batch_transform(encoder: Any, kinds: dict[str, TaskKind]) -> BatchTransform | None:
    """The training-batch augmentation of image inputs, with each dense kind's padding
    value (`augment_fill`) and flipped channel (`flip_negate_channel`)."""
    if not isinstance(encoder, ImageInputs):
        return None
    fill = {t: k.augment_fill for t, k in kinds.items()}
    negate = {t: k.flip_negate_channel for t, k in kinds.items()
              if k.flip_negate_channel is not None}
    return encoder.batch_transform(fill, negate)


def _input_owner(readers: list[Task], kinds: dict[str, TaskKind]) -> TaskKind | None:
    """The kind that encodes the inputs of a source itself (see `TaskKind.owns_inputs`), or
    None when the backbone's input encoder reads the task columns."""
    owners = [t for t in readers if kinds[t.name].owns_inputs]
    if owners and len(readers) > 1:
        raise ConfigError(
            f"tasks.{owners[0].name}: kind {owners[0].kind!r} builds its own inputs, so the task "
            f"needs a dataset of its own, but tasks {[t.name for t in readers]} share one; give "
            f"task {owners[0].name!r} its own `data:` section")
    return kinds[owners[0].name] if owners else None


def _tags_words(kind: TaskKind) -> bool:
    """The kind labels words of its input, aligned to sub-words here (token classification);
    a token-level kind that builds its own inputs (extractive QA) labels tokens itself."""
    return kind.level == "token" and not kind.owns_inputs


def build_kinds(tasks: list[Task]) -> dict[str, TaskKind]:
    return {t.name: TASK_KINDS.get(t.kind)(t) for t in tasks}


def prepare(config: RunConfig,
            carved_rows: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
            backbone: nn.Module | None = None,
            ) -> tuple[PreparedData, MultiTaskModel, TextInputs | TabularInputs, BackboneSpec]:
    """Load, check and encode all data, then build the model (seeded by the run's seed).

    `carved_rows` (source -> split -> original train rows, as a run's splits.json records
    them) replays a run's carving of missing splits instead of drawing it. `backbone`: a
    module of the user's in place of the configured one; it is fed what the configured
    backbone type encodes (never pre-computed embeddings)."""
    torch.manual_seed(config.train.seed)
    resolved = resolve(config)
    sources, task_source = _load_sources(config, resolved, carved_rows)
    inputs_of = _source_inputs(resolved.tasks, task_source)
    warn_label_leakage(resolved.tasks, task_source)
    kinds = build_kinds(resolved.tasks)
    if resolved.backbone.type != "hf":
        for task in resolved.tasks:
            if kinds[task.name].level == "token":
                raise ConfigError(
                    f"tasks.{task.name}: kind {task.kind!r} tags words, so it needs a text "
                    "backbone (model.backbone.type: hf), not an MLP over table columns"
                )
    generative = [t.name for t in resolved.tasks if kinds[t.name].generative]
    backbone, encoder = (build_generative(resolved.backbone, generative, backbone) if generative
                         else build_encoder(resolved.backbone, sources, inputs_of, backbone))
    splits: dict[str, dict[str, SplitData]] = {}
    for name, source in sources.items():
        readers = [t for t in resolved.tasks if task_source[t.name] == name]
        words = any(_tags_words(kinds[t.name]) for t in readers)
        owner = _input_owner(readers, kinds)
        for task in readers:
            kinds[task.name].fit(source.frames["train"])
        splits[name] = {}
        where = "data" if name == SHARED else f"tasks.{name}.data"
        for split, frame in source.frames.items():
            for task in readers:
                if _tags_words(kinds[task.name]):
                    check_token_lengths(task, frame, split)
            try:
                inputs = (owner.encode_inputs(frame, encoder, split) if owner is not None
                          else encoder.encode(frame, inputs_of[name], words=words))
            except DataError as error:
                raise DataError(f"{where} ({split} split): {error}") from None
            if (isinstance(backbone, HFEncoder) and backbone.frozen and not words
                    and config.model.adapter is None
                    and owner is None):
                key = content_hash(encoder.name, inputs_of[name], frame[inputs_of[name]].values)
                inputs = backbone.embed_all(inputs, key)
            labels = {}
            for task in readers:
                encoded = kinds[task.name].encode(frame, split)
                if _tags_words(kinds[task.name]):
                    encoded = align_token_labels(encoded, inputs["word_index"])
                labels[task.name] = encoded
            splits[name][split] = SplitData(inputs, labels)
    record = {"sources": {n: _source_record(src, config.train.split_seed)
                          for n, src in sources.items()}}
    data = PreparedData(resolved.tasks, kinds, task_source, splits, record,
                        _batch_transform(encoder, kinds))
    model = build_model(config.model, resolved.tasks, kinds, backbone)
    return data, model, encoder, resolved.backbone


def feature_width(backbone: nn.Module) -> int:
    """The width of the backbone's features: its `output_dim`, or `feature_dim`."""
    width = getattr(backbone, "output_dim", None) or getattr(backbone, "feature_dim", None)
    if width is None:
        raise ConfigError(f"model: the backbone {type(backbone).__name__} has no `output_dim` "
                          "(or `feature_dim`) attribute; set it to the width of its features")
    return int(width)


def build_model(settings: ModelConfig, tasks: list[Task], kinds: dict[str, TaskKind],
                backbone: nn.Module) -> MultiTaskModel:
    """Backbone -> the configured sharing architecture -> one head per task."""
    names = [t.name for t in tasks]
    generative = [n for n in names if kinds[n].generative]
    if generative:
        check_sharing(settings.architecture.name, settings.architecture.options, generative)
    architecture_cls = ARCHITECTURES.get(settings.architecture.name)
    try:
        architecture = architecture_cls(feature_width(backbone), names,
                                        **settings.architecture.options)
    except TypeError as error:
        raise ConfigError(f"model.architecture: {error}") from None
    heads: dict[str, nn.Module] = {}
    for name in names:
        width = settings.head_hidden or architecture.output_dim
        head: nn.Module = kinds[name].build_head(width)
        if settings.head_hidden and not kinds[name].generative:  # the LM head is its own
            head = nn.Sequential(nn.Linear(architecture.output_dim, settings.head_hidden),
                                 nn.ReLU(), head)
        heads[name] = head
    levels = {n: kinds[n].level for n in names}
    adapter = build_adapter(settings, names, backbone)
    return MultiTaskModel(backbone, heads, architecture, levels, adapter=adapter)


def build_adapter(settings: ModelConfig, names: list[str], backbone: nn.Module) -> Adapter | None:
    """The configured multi-task adapter attached to `backbone` (which it freezes), or None."""
    if settings.adapter is None:
        return None
    if isinstance(backbone, MLPBackbone):
        raise ConfigError(
            f"model.adapter: {settings.adapter.name!r} adds low-rank parameters to the linear "
            "layers of a frozen pretrained transformer, but the backbone is the tabular MLP "
            "(model.backbone.type: mlp), which trains in full; remove model.adapter, or use a "
            "Hugging Face backbone (model.backbone.type: hf)")
    try:
        adapter = ADAPTERS.get(settings.adapter.name)(names, **settings.adapter.options)
    except TypeError as error:
        raise ConfigError(f"model.adapter: {error}") from None
    adapter.attach(backbone)
    return adapter
