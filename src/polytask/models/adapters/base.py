"""The adapter interface: low-rank parameters added to a frozen backbone, routed per sample.

An adapter freezes every backbone parameter and replaces the backbone's `nn.Linear` layers
whose qualified names match `target_modules` (PEFT's matching rule, through PEFT's own
`check_target_module_exists`) by a wrapper that adds the method's low-rank path to the
frozen layer's output. The wrappers live in the backbone (so its state dict holds them, as
in PEFT: `...query.base_layer.weight`); the adapter keeps a plain (unregistered) reference
to each, and holds as registered submodules only parameters that belong to no single layer.

Routing: one `RoutingState` object, held by the adapter and referenced by every wrapper,
carries the per-sample task indices (B,) (and, for preference-conditioned methods, a B x T
preference matrix) of the next forward. `MultiTaskModel` calls `adapter.route(task_ids)`
before its one backbone pass over a mixed-task batch; each wrapper gathers its task's
parameters from a stacked (T, ...) tensor: no Python loop over tasks or samples.

Registering: `@ADAPTERS.register("name", paper="...")` on a subclass whose constructor is
`(task_names, r, alpha, dropout, target_modules, **method options)`; the config's
`model.adapter` keys other than `name` are passed as those options.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from polytask.errors import CheckpointError, ConfigError, TrainingError
from polytask.registry import Registry

ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


@dataclass(eq=False)
class RoutingState:
    """Per-sample routing of the next forward, shared by every adapted layer.

    `task_ids`: (B,) long indices into the adapter's `task_names`, or None (no task known:
    e.g. molora routes with its learned router). `preference`: a B x T preference matrix for
    preference-conditioned methods, else None. `mask`: the batch's (B, L) attention mask when
    its inputs are token sequences (for methods that pool over tokens), else None.
    A layer may see B x k rows (a backbone that flattens k choices per example): `for_rows`
    repeats each example's entry k times.
    """

    task_ids: Tensor | None = None
    preference: Tensor | None = None
    mask: Tensor | None = None

    def require_task_ids(self, method: str, x: Tensor) -> Tensor:
        """The task index of each of `x`'s rows, or a TrainingError saying that `method`
        needs task ids."""
        if self.task_ids is None:
            raise TrainingError(
                f"adapter {method!r} routes each example to its task's parameters, but no "
                "task ids were given: call adapter.route(task_ids) before the forward "
                "(MultiTaskModel does this for you)"
            )
        return for_rows(self.task_ids, x)


def for_rows(per_example: Tensor, x: Tensor) -> Tensor:
    """`per_example` (B, ...) repeated to `x`'s leading dimension (B x k rows, k >= 1)."""
    rows, examples = x.shape[0], per_example.shape[0]
    if rows == examples:
        return per_example
    if examples == 0 or rows % examples:
        raise TrainingError(f"adapter routing: {examples} routed examples but the layer got "
                            f"{rows} rows; route() must get one entry per example")
    return per_example.repeat_interleave(rows // examples, dim=0)


def target_config(target_modules: Sequence[str] | str) -> Any:
    """A PEFT config carrying `target_modules`, for PEFT's matching helper."""
    from peft import LoraConfig

    modules = target_modules if isinstance(target_modules, str) else list(target_modules)
    return LoraConfig(target_modules=modules)


def linear_names(backbone: nn.Module) -> list[str]:
    """Qualified names of the backbone's `nn.Linear` layers."""
    return [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]


def matching_linear_names(backbone: nn.Module, target_modules: Sequence[str] | str) -> list[str]:
    """The backbone's `nn.Linear` layers that `target_modules` selects, by PEFT's rule (a
    list of name suffixes matched at a dot boundary, or one regex matched in full). Raises a
    ConfigError listing the backbone's linear layer names when nothing matches."""
    from peft.tuners.tuners_utils import check_target_module_exists

    config = target_config(target_modules)
    candidates = linear_names(backbone)
    chosen = [name for name in candidates if _found(check_target_module_exists(config, name))]
    if not chosen:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name in candidates})
        raise ConfigError(
            f"model.adapter.target_modules: {target_modules!r} matches none of the backbone's "
            f"linear layers. Its linear layer names end in: {', '.join(suffixes) or 'none'} "
            f"(e.g. {candidates[0] if candidates else 'none'}); list some of those"
        )
    return chosen


def _found(found: Any) -> bool:
    """PEFT's helper returns True, a regex match, or a falsy / excluded marker."""
    return found is True or isinstance(found, re.Match)


def kaiming_uniform_(tensor: Tensor) -> Tensor:
    """nn.Linear's (and PEFT's LoRA A's) default initialisation, on a (.., out, in) tensor
    (stacked tensors are initialised slice by slice, each with its own fan-in)."""
    for matrix in tensor.reshape(-1, *tensor.shape[-2:]):
        nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
    return tensor


class AdaptedLinear(nn.Module, ABC):
    """A frozen `nn.Linear` (`base_layer`) plus a method's low-rank path (`delta`).

    Subclasses hold the method's per-layer parameters and implement `delta(x)`, reading the
    per-sample routing from `self.routing`. `in_features`/`out_features` mirror the base.
    """

    def __init__(self, base_layer: nn.Linear, routing: RoutingState, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.routing = routing
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.delta(self.dropout(x)).to(x.dtype)

    @abstractmethod
    def delta(self, x: Tensor) -> Tensor:
        """The low-rank path's output for `x` (..., in_features) -> (..., out_features)."""

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        """The parameters of this layer that only task index `task` uses (none by default)."""
        del task
        return iter(())

    def delta_weight(self, task: int) -> Tensor:
        """ΔW (out_features x in_features) of task index `task`, when the path is linear and
        input-independent; subclasses that cannot merge leave this raising."""
        del task
        raise NotImplementedError


def per_sample(stacked: Tensor, task_ids: Tensor) -> Tensor:
    """Each sample's slice of a stacked (T, ...) parameter: (B, ...), by one gather."""
    return stacked.index_select(0, task_ids)


def batched_matmul(x: Tensor, weights: Tensor) -> Tensor:
    """x (B, ..., d) times per-sample weights (B, d, k) -> (B, ..., k), one bmm."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return torch.bmm(flat, weights).reshape(*x.shape[:-1], weights.shape[-1])


class Adapter(nn.Module, ABC):
    """Low-rank (or prompt) parameters added to a frozen backbone, routed per sample by task.

    `r`: the rank; `alpha`: the LoRA scale numerator (the low-rank path is scaled by
    alpha / r unless the method says otherwise); `dropout`: on the adapter path's input;
    `target_modules`: which `nn.Linear` layers to adapt (PEFT's syntax: name suffixes, or
    one regex matched against the full qualified name).

    `task_routed` (class attribute): whether outputs depend on each example's task; when
    False (one path shared by all tasks), tasks reading the same inputs share one pass.
    """

    task_routed: ClassVar[bool] = True

    def __init__(self, task_names: Sequence[str], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0,
                 target_modules: Sequence[str] | str = ("query", "value")) -> None:
        super().__init__()
        if not task_names:
            raise ConfigError("model.adapter: the model has no tasks to adapt to")
        if r <= 0:
            raise ConfigError(f"model.adapter.r: the rank must be a positive integer, got {r}; "
                              "use e.g. 8")
        if alpha <= 0:
            raise ConfigError(f"model.adapter.alpha: must be positive, got {alpha}; use e.g. "
                              "16 (twice r)")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.adapter.dropout: must be in [0, 1), got {dropout}; use "
                              "e.g. 0.0 or 0.1")
        if not target_modules:
            raise ConfigError("model.adapter.target_modules: empty; name the linear layers "
                              "to adapt, e.g. [query, value]")
        self.task_names = list(task_names)
        self.r = r
        self.alpha = float(alpha)
        self.dropout = dropout
        self.target_modules: Sequence[str] | str = (
            target_modules if isinstance(target_modules, str) else list(target_modules))
        self.routing = RoutingState()
        # saved with the weights, so reloading them for another task count fails clearly
        self.register_buffer("num_tasks", torch.tensor(len(self.task_names)))
        self.wrapped: dict[str, nn.Module] = {}  # qualified name -> wrapper; not registered
        self.attached_to: dict[str, tuple[int, int]] = {}  # name -> (in, out) features

    @property
    def name(self) -> str:
        """The registered name of this adapter."""
        return next(n for n in ADAPTERS.names() if ADAPTERS.get(n) is type(self))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    # -- attaching ---------------------------------------------------------------------------

    def attach(self, backbone: nn.Module) -> None:
        """Freeze every backbone parameter and replace each `nn.Linear` whose name matches
        `target_modules` by `self.wrap(name, layer)`."""
        if self.wrapped:
            raise ConfigError(f"model.adapter: {self.name!r} is already attached to a backbone")
        names = matching_linear_names(backbone, self.target_modules)
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        for index, name in enumerate(names):
            layer = backbone.get_submodule(name)
            wrapper = self.wrap(name, index, layer)
            backbone.set_submodule(name, wrapper)
            self.wrapped[name] = wrapper
            self.attached_to[name] = (layer.in_features, layer.out_features)
        self.after_attach(backbone)

    @abstractmethod
    def wrap(self, name: str, index: int, layer: nn.Linear) -> nn.Module:
        """The module that replaces `layer` (the `index`-th matched layer, qualified name
        `name`): it must keep the frozen layer as its `base_layer` attribute."""

    def after_attach(self, backbone: nn.Module) -> None:
        """Hook after every layer is wrapped (e.g. to add prompt parameters); default none."""
        del backbone

    def detach(self, backbone: nn.Module) -> None:
        """Put the original (frozen) linear layers back in place of the wrappers."""
        for name, wrapper in self.wrapped.items():
            backbone.set_submodule(name, wrapper.base_layer)
        self.wrapped = {}

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "num_tasks")
        if saved is not None and int(saved) != len(self.task_names):
            raise CheckpointError(
                f"model.adapter: the saved {self.name!r} adapter weights are for {int(saved)} "
                f"tasks, but this model has {len(self.task_names)} "
                f"({', '.join(self.task_names)}); its per-task parts cannot be matched. Reload "
                "with the task list the run was trained with, or train a new run"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- routing -----------------------------------------------------------------------------

    def route(self, task_ids: Tensor | None, preference: Tensor | None = None,
              mask: Tensor | None = None) -> None:
        """Set the per-sample routing read by every adapted layer in the next forward:
        `task_ids` (B,) long indices into `task_names` (None: unknown), for
        preference-conditioned methods a B x T `preference` matrix, and the batch's (B, L)
        attention `mask` when it has one."""
        self.routing.task_ids = task_ids
        self.routing.preference = preference
        self.routing.mask = mask

    def task_index(self, task: str) -> int:
        if task not in self.task_names:
            raise ConfigError(f"adapter: unknown task {task!r}; its tasks: "
                              f"{', '.join(self.task_names)}")
        return self.task_names.index(task)

    # -- parameters --------------------------------------------------------------------------

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter this adapter added: in the wrappers (not their frozen base layer)
        and on the adapter itself."""
        seen: set[int] = set()
        frozen = {id(p) for w in self.wrapped.values() for p in w.base_layer.parameters()}
        modules: list[nn.Module] = [*self.wrapped.values(), self]
        for module in modules:
            for parameter in module.parameters():
                if id(parameter) not in frozen and id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield parameter

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters private to `task` (filled from its loss only): its parts of every
        wrapped layer of polytask's own (`AdaptedLinear.task_parameters`; none by default)."""
        index = self.task_index(task)
        for wrapper in self.wrapped.values():
            if isinstance(wrapper, AdaptedLinear):
                yield from wrapper.task_parameters(index)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Adapter parameters used by more than one task: all those no task owns."""
        private = {id(p) for t in self.task_names for p in self.task_parameters(t)}
        return (p for p in self.adapter_parameters() if id(p) not in private)

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.adapter_parameters() if p.requires_grad)

    @classmethod
    @abstractmethod
    def trainable_count(cls, layers: Mapping[str, tuple[int, int]], num_tasks: int,
                        **options: Any) -> int:
        """The docstring's formula: trainable parameters for the adapted layers `layers`
        (qualified name -> (in_features, out_features), as `attached_to` holds), `num_tasks`
        tasks and the constructor `options` given (r, ...; omitted ones take their
        defaults)."""

    # -- losses and export -------------------------------------------------------------------

    def auxiliary_loss(self) -> Tensor | None:
        """An extra loss from the last forward (molora's router loss), or None."""
        return None

    @classmethod
    def reload_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The constructor options that rebuild a trained adapter whose weights are loaded
        next: without those that only initialise it from elsewhere (poly/mhr/mpt's source
        run); unchanged by default."""
        return options

    #: Conditioned on a preference over the tasks, given at inference (`set_preference`).
    preference_conditioned: ClassVar[bool] = False

    def set_preference(self, values: Sequence[float] | Tensor,
                       field: str = "preference") -> None:
        """The inference preference of a preference-conditioned adapter (one non-negative
        weight per task, in `task_names` order)."""
        raise ConfigError(f"{field}: only a preference-conditioned adapter takes a preference "
                          f"(e.g. model.adapter: palora); this run's adapter is {self.name!r}. "
                          f"Drop {field}.")

    def weigh_losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The task losses the balancer receives (palora weighs them by its training
        preference); unchanged by default."""
        return losses

    def merged_delta(self, task: str) -> dict[str, Tensor]:
        """{qualified weight name in the unadapted backbone (`...query.weight`): ΔW} such
        that base W + ΔW gives `task`'s outputs without the adapter (export --format hf).
        Raises a ConfigError naming the method when its path cannot be merged."""
        index = self.task_index(task)
        try:
            return {f"{name}.weight": wrapper.delta_weight(index).detach()
                    for name, wrapper in self.wrapped.items()}
        except NotImplementedError:
            raise ConfigError(
                f"export: adapter {self.name!r} cannot be merged into the base weights (its "
                "low-rank path depends on the input); export with --format peft where it has "
                "an equivalent, or keep the polytask run folder"
            ) from None

    def before_step(self, step: int, total_steps: int) -> bool:
        """Called by the trainer (through the model) before optimizer step `step` of
        `total_steps` (e.g. to anneal a temperature); must depend only on `step` (and saved
        state) for exact resume. Returns True when the shared/task parameter split changed."""
        del step, total_steps
        return False


def apply_preference(adapter: Adapter | None, values: Sequence[float] | Tensor,
                     field: str = "--preference") -> None:
    """Set the inference preference of a model's preference-conditioned adapter; a
    ConfigError naming `field` for a model without one, or for a bad vector."""
    if adapter is None:
        raise ConfigError(f"{field}: only a run with a preference-conditioned adapter (e.g. "
                          f"model.adapter: palora) takes a preference; this run has no adapter. "
                          f"Drop {field}.")
    adapter.set_preference(values, field)
