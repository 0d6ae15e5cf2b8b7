"""Multitask prompt tuning (`mpt`): a shared soft prompt times task-specific low-rank matrices.

Wang, Panda, Karlinsky, Feris, Sun and Kim, "Multitask Prompt Tuning Enables
Parameter-Efficient Transfer Learning" (ICLR 2023). A soft prompt of `num_virtual_tokens`
vectors is prepended to the input embeddings of the frozen transformer. Task t's prompt is
the shared prompt P* (l x d) times, elementwise, a rank-r matrix: P_t = P* ⊙ (u_t v_tᵀ), with
u_t: l x r and v_t: r x d (the paper's rank 1 is `r: 1`, the default here). The prompt
positions are dropped from the encoder's output, so pooling and token-level heads see the
input's positions only.

Source training, then target tasks: train `mpt` on the source tasks; then train the target
task(s) with `model.adapter: {name: mpt, source: SOURCE_RUN_DIR, source_init: average}`: P*
is copied from the source and every target task's u, v start from the mean of the source
tasks' (`average`), from one source task's (its name), or stay random (`shared`: only P*
is copied). Everything then trains on the target tasks. (The paper also distils
single-task teacher prompts during source training; that step is not included.)

Trainable parameters (d: the backbone's hidden size; l: num_virtual_tokens):
    l x d  +  T x r x (l + d)

From PEFT (`peft.tuners.multitask_prompt_tuning`): the prompt module
(`MultitaskPromptEmbedding`: P* as `embedding.weight`, u as `prefix_task_cols`, v as
`prefix_task_rows`, their initialisation — P* from randomly sampled vocabulary embeddings,
u and v normal(0, 0.02) — and the per-sample P* ⊙ u_t v_t product by index_select), and the
source-initialisation choices (its AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK and
ONLY_SOURCE_SHARED). What polytask adds: prepending to any Hugging Face encoder or decoder
(hooks on the transformer's forward), per-sample routing of a mixed-task batch, loading the
source from a polytask run. `alpha` and `target_modules` do not apply (no linear layer is
adapted); `dropout` applies to the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from polytask.errors import CheckpointError, ConfigError
from polytask.models.adapters._sources import read_source
from polytask.models.adapters.base import ADAPTERS, Adapter, for_rows

SOURCE_FIELD = "model.adapter.source"


def transformer_of(backbone: nn.Module) -> nn.Module:
    """The first submodule with input embeddings (a transformers model), or a ConfigError."""
    for module in backbone.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if callable(getter) and isinstance(getter(), nn.Embedding):
            return module
    raise ConfigError("model.adapter: 'mpt' prepends a soft prompt to the input embeddings of "
                      "a transformers model; this backbone has none (use model.backbone.type: "
                      "hf, or another adapter)")


def task_prompt_embedding(length: int, num_tasks: int, rank: int,
                          embeddings: nn.Embedding) -> nn.Module:
    """PEFT's `MultitaskPromptEmbedding` (P* from sampled vocabulary embeddings, u and v
    normal(0, 0.02)) with each task's u (`task_cols[t]`, l x r) and v (`task_rows[t]`,
    r x d) its own parameter, private to the task; PEFT's forward is used as is, on their
    stacks."""
    from peft import MultitaskPromptTuningConfig
    from peft.tuners.multitask_prompt_tuning.model import MultitaskPromptEmbedding
    from peft.tuners.prompt_tuning import PromptTuningInit

    class TaskRowsPromptEmbedding(MultitaskPromptEmbedding):
        """`MultitaskPromptEmbedding` whose `prefix_task_cols` / `prefix_task_rows` are the
        stacks of per-task parameters initialised from PEFT's."""

        def __init__(self, config: Any) -> None:
            super().__init__(config, embeddings)
            self.task_cols = _split_rows(self._parameters.pop("prefix_task_cols"))
            self.task_rows = _split_rows(self._parameters.pop("prefix_task_rows"))

        @property
        def prefix_task_cols(self) -> Tensor:  # type: ignore[override]
            return torch.stack(tuple(self.task_cols))

        @property
        def prefix_task_rows(self) -> Tensor:  # type: ignore[override]
            return torch.stack(tuple(self.task_rows))

    return TaskRowsPromptEmbedding(MultitaskPromptTuningConfig(
        num_virtual_tokens=length, token_dim=embeddings.embedding_dim,
        num_transformer_submodules=1, num_tasks=num_tasks, num_ranks=rank,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB))


def _split_rows(stacked: Tensor | None) -> nn.ParameterList:
    """One parameter per row of a stacked (T, ...) parameter."""
    assert stacked is not None
    return nn.ParameterList(nn.Parameter(row.detach().clone()) for row in stacked)


@ADAPTERS.register("mpt", paper="Multitask Prompt Tuning Enables Parameter-Efficient Transfer "
                   "Learning (Wang et al., ICLR 2023)")
class MPT(Adapter):
    """Multitask prompt tuning: a shared soft prompt ⊙ task-specific rank-r matrices,
    prepended to the input embeddings; target tasks start from a source run's prompt.

    Options: `num_virtual_tokens` (prompt length l), `source` (a finished `mpt` run whose
    prompt initialises this one), `source_init` (`average`, `shared` or a source task's
    name: how the target tasks' u, v start). `r` is the rank of the task matrices (1 in the
    paper).

    Trainable parameters: l·d + T·r·(l + d) (l: num_virtual_tokens, d: hidden size).
    """

    def __init__(self, task_names: Sequence[str], r: int = 1, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value"),
                 num_virtual_tokens: int = 20, source: str | None = None,
                 source_init: str = "average") -> None:
        super().__init__(task_names, r, alpha, dropout, target_modules)
        if num_virtual_tokens < 1:
            raise ConfigError(f"model.adapter.num_virtual_tokens: must be a positive integer, "
                              f"got {num_virtual_tokens}")
        self.num_virtual_tokens = num_virtual_tokens
        self.source = source
        self.source_init = source_init
        self.prompt_dropout = nn.Dropout(dropout)
        self.prompt: nn.Module | None = None
        self.hooks: list[RemovableHandle] = []
        self.register_buffer("indices", torch.arange(num_virtual_tokens), persistent=False)

    # -- attaching ---------------------------------------------------------------------------

    def attach(self, backbone: nn.Module) -> None:
        """Freeze the backbone, build the prompt (initialised from `source` when given) and
        hook the transformer's forward to prepend it."""
        if self.prompt is not None:
            raise ConfigError("model.adapter: 'mpt' is already attached to a backbone")
        transformer = transformer_of(backbone)
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        embeddings = transformer.get_input_embeddings()
        self.prompt = self.build_prompt(embeddings)
        name = next(n for n, m in backbone.named_modules() if m is embeddings)
        self.attached_to[name] = (embeddings.num_embeddings, embeddings.embedding_dim)
        if self.source is not None:
            self.initialise_from_source(self.source)
        self.hooks = [
            transformer.register_forward_pre_hook(self._prepend, with_kwargs=True),
            transformer.register_forward_hook(self._strip, with_kwargs=True),
        ]

    @classmethod
    def reload_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Without `source` and `source_init`: a trained model's weights replace the prompt."""
        return {k: v for k, v in options.items() if k not in ("source", "source_init")}

    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        """Never called: `mpt` adapts the input embeddings, not linear layers."""
        raise ConfigError(f"model.adapter: 'mpt' does not wrap linear layers ({name})")

    def detach(self, backbone: nn.Module) -> None:
        del backbone
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    def build_prompt(self, embeddings: nn.Embedding) -> nn.Module:
        """PEFT's `MultitaskPromptEmbedding` for this model's width and tasks."""
        return task_prompt_embedding(self.num_virtual_tokens, len(self.task_names), self.r,
                                     embeddings).to(embeddings.weight.device)

    def initialise_from_source(self, source: str) -> None:
        """P* from the source run; u, v by `source_init` (see the module docstring)."""
        assert self.prompt is not None
        weights = read_source(source, SOURCE_FIELD)
        shared = self.prompt.embedding.weight
        cols, rows = self.prompt.prefix_task_cols, self.prompt.prefix_task_rows
        source_shared = weights.checked("prompt.embedding.weight", tuple(shared.shape),
                                        SOURCE_FIELD)
        source_cols = weights.stacked("prompt.task_cols", SOURCE_FIELD)
        source_rows = weights.stacked("prompt.task_rows", SOURCE_FIELD)
        if source_cols.shape[1:] != cols.shape[1:] or source_rows.shape[1:] != rows.shape[1:]:
            raise CheckpointError(
                f"{SOURCE_FIELD}: the source's task matrices have rank "
                f"{source_cols.shape[-1]} over {source_cols.shape[1]} tokens; this adapter's "
                f"r is {self.r} over {self.num_virtual_tokens}: use the source's r and "
                "num_virtual_tokens")
        with torch.no_grad():
            shared.copy_(source_shared)
            if self.source_init == "shared":
                return
            index = self.source_task(weights.task_names)
            picked = slice(None) if index is None else slice(index, index + 1)
            for mine, theirs in ((self.prompt.task_cols, source_cols),
                                 (self.prompt.task_rows, source_rows)):
                start = theirs[picked].mean(0)
                for parameter in mine:
                    parameter.copy_(start)

    def source_task(self, names: list[str] | None) -> int | None:
        """The source task index `source_init` names (None for `average`)."""
        if self.source_init == "average":
            return None
        if names is None or self.source_init not in names:
            known = f"its tasks are {', '.join(names)}" if names else "it records no tasks"
            raise ConfigError(
                f"model.adapter.source_init: {self.source_init!r} is not average, shared or a "
                f"task of the source run {self.source!r} ({known})")
        return names.index(self.source_init)

    # -- the forward hooks -------------------------------------------------------------------

    def prompts(self, task_ids: Tensor) -> Tensor:
        """Each example's task prompt (B, l, d)."""
        assert self.prompt is not None
        indices = self.indices.expand(task_ids.shape[0], -1)
        return self.prompt_dropout(self.prompt(indices, task_ids))

    def _prepend(self, module: nn.Module, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Replace `input_ids` by their embeddings after the task prompts, and extend the
        attention mask (and token types) over the prompt."""
        if args:
            kwargs = {"input_ids": args[0], **kwargs}
        input_ids = kwargs.pop("input_ids", None)
        embeds = (kwargs.pop("inputs_embeds") if input_ids is None
                  else module.get_input_embeddings()(input_ids))
        task_ids = for_rows(self.routing.require_task_ids(self.name, embeds), embeds)
        prompts = self.prompts(task_ids.to(embeds.device)).to(embeds.dtype)
        kwargs["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
        batch, length = embeds.shape[0], self.num_virtual_tokens
        mask = kwargs.get("attention_mask")
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, length), mask], dim=1)
        types = kwargs.get("token_type_ids")
        if types is not None:
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, length), types], dim=1)
        if kwargs.get("position_ids") is not None:
            raise ConfigError("model.adapter: 'mpt' cannot prepend its prompt to inputs with "
                              "explicit position_ids")
        return (), kwargs

    def _strip(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
               output: Any) -> Any:
        """Drop the prompt positions from the transformer's last hidden state."""
        del module, args, kwargs
        output.last_hidden_state = output.last_hidden_state[:, self.num_virtual_tokens:]
        return output

    # -- parameters and export ---------------------------------------------------------------

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Task `task`'s u and v (P* is shared)."""
        index = self.task_index(task)
        assert self.prompt is not None
        yield self.prompt.task_cols[index]
        yield self.prompt.task_rows[index]

    def merged_delta(self, task: str) -> dict[str, Tensor]:
        raise ConfigError("export: adapter 'mpt' prepends a soft prompt, which cannot be merged "
                          "into the base weights; export with --format peft, or keep the "
                          "polytask run folder")

    @classmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        r = int(options.get("r", 1))
        length = int(options.get("num_virtual_tokens", 20))
        return sum(length * d + num_tasks * r * (length + d) for _, d in layers.values())
