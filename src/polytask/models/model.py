"""MultiTaskModel: backbone -> sharing architecture -> one head per task."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from polytask.models import mixed_batch
from polytask.models.adapters import Adapter
from polytask.models.inputs import Encoded
from polytask.models.sharing import SharingArchitecture
from polytask.models.sharing.hard_sharing import HardSharing
from polytask.models.staged import StagedFeatures


@dataclass(eq=False)
class ModelOutput(Mapping[str, Tensor]):
    """What one forward of a `MultiTaskModel` returns.

    `outputs`: each requested task's head output. `features`: the one tensor every task's
    head read, when there is one (hard sharing over a shared batch), for balancers that work
    on features; else None. `auxiliary_loss`: the sharing architecture's extra loss (e.g.
    mixture-of-experts load balancing), summed over the backbone passes; None when it has
    none. The object is also a read-only mapping task -> output (`out["a"]`, `for t in out`).
    """

    outputs: dict[str, Tensor]
    features: Tensor | None = None
    auxiliary_loss: Tensor | None = None

    def __getitem__(self, task: str) -> Tensor:
        return self.outputs[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)


class MultiTaskModel(nn.Module):
    """A shared backbone, a sharing architecture and per-task heads.

    `forward({task: inputs})` returns a `ModelOutput` (per-task head outputs, the shared
    features, the auxiliary loss). Tasks whose inputs are the same object (one dataset
    labelled for several tasks) share one backbone pass.
    The backbone is any `nn.Module`: polytask's own take `(inputs, level)`; a module whose
    `forward` has no `level` parameter is called with the inputs alone. Its feature width is
    the `feature_dim` argument, else the backbone's `output_dim` or `feature_dim` attribute.
    `levels` says which tasks read token features (`"token"`) instead of sentence features.
    `adapter`: a multi-task adapter already attached to the backbone; then the rows of all
    tasks of a level go through the backbone in one pass, each routed to its task's adapter
    parts (tasks reading the same inputs share the pass only if the adapter is not routed).
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Mapping[str, nn.Module],
        architecture: SharingArchitecture | None = None,
        levels: Mapping[str, str] | None = None,
        feature_dim: int | None = None,
        adapter: Adapter | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.task_names = list(heads)
        width = (feature_dim or getattr(backbone, "output_dim", None)
                 or getattr(backbone, "feature_dim", None))
        if architecture is None and width is None:
            raise ValueError("MultiTaskModel: give `feature_dim` (the backbone's output width) "
                             "or a backbone with an `output_dim` (or `feature_dim`) attribute")
        self.architecture = architecture or HardSharing(int(width), self.task_names)
        self._passes_level = "level" in inspect.signature(backbone.forward).parameters
        self.heads = nn.ModuleDict(heads)
        self.levels = {t: (levels or {}).get(t, "sequence") for t in self.task_names}

    def forward(self, inputs_by_task: Mapping[str, Encoded | Tensor]) -> ModelOutput:
        if self.adapter is not None:
            return self._routed_forward(inputs_by_task, self.adapter)
        groups: dict[tuple[int, str], list[str]] = {}
        for task, inputs in inputs_by_task.items():
            groups.setdefault((id(inputs), self.levels[task]), []).append(task)
        representations: dict[str, Tensor] = {}
        auxiliary: Tensor | None = None
        for (_, level), tasks in groups.items():
            inputs = inputs_by_task[tasks[0]]
            features = self.backbone(inputs, level) if self._passes_level else self.backbone(inputs)
            representations.update(self.architecture(self._for_architecture(features), tasks))
            extra = self.architecture.auxiliary_loss()
            if extra is not None:
                auxiliary = extra if auxiliary is None else auxiliary + extra
        outputs = {task: self.heads[task](representations[task]) for task in inputs_by_task}
        unique = {id(r) for r in representations.values()}
        shared = next(iter(representations.values())) if len(unique) == 1 else None
        return ModelOutput(outputs, shared, auxiliary)

    def _for_architecture(self, features: Tensor | StagedFeatures) -> Tensor | StagedFeatures:
        """A dense backbone's stage maps go to an architecture that reads them (MTAN); any
        other architecture gets the final map only."""
        if isinstance(features, StagedFeatures) and not self.architecture.reads_stages:
            return features.output
        return features

    def _routed_forward(self, inputs_by_task: Mapping[str, Encoded | Tensor],
                        adapter: Adapter) -> ModelOutput:
        """With an adapter: per level, ONE backbone pass over the rows of every task, each
        row routed to its task's adapter parts (`adapter.route`), then split back per task."""
        by_level: dict[str, list[str]] = {}
        for task in inputs_by_task:
            by_level.setdefault(self.levels[task], []).append(task)
        index = {t: adapter.task_index(t) for t in inputs_by_task}
        representations: dict[str, Tensor] = {}
        auxiliary: Tensor | None = None
        try:
            for level, tasks in by_level.items():
                parts = mixed_batch.parts_of(tasks, inputs_by_task, adapter.task_routed)
                batch = mixed_batch.concat(parts)
                first = next(iter(batch.values())) if isinstance(batch, dict) else batch
                adapter.route(mixed_batch.task_ids(parts, index, first.device),
                              mask=batch.get("attention_mask") if isinstance(batch, dict)
                              else None)
                features = (self.backbone(batch, level) if self._passes_level
                            else self.backbone(batch))
                auxiliary = _add(auxiliary, adapter.auxiliary_loss())
                pieces = mixed_batch.split(features, parts, level == "token")
                for part, piece in zip(parts, pieces, strict=True):
                    representations.update(self.architecture(piece, list(part.tasks)))
                    auxiliary = _add(auxiliary, self.architecture.auxiliary_loss())
        finally:
            adapter.route(None)
        outputs = {task: self.heads[task](representations[task]) for task in inputs_by_task}
        return ModelOutput(outputs, None, auxiliary)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters used by more than one task (backbone, shared architecture
        and shared adapter parts)."""
        params = list(self.backbone.parameters()) + list(self.architecture.shared_parameters())
        private: set[int] = set()
        if self.adapter is not None:
            params += list(self.adapter.shared_parameters())
            private = {id(p) for t in self.task_names for p in self.adapter.task_parameters(t)}
        return _unique(p for p in params if p.requires_grad and id(p) not in private)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Trainable parameters only `task` uses (its head, private architecture and adapter
        parts)."""
        params = list(self.architecture.task_parameters(task)) + list(self.heads[task].parameters())
        if self.adapter is not None:
            params += list(self.adapter.task_parameters(task))
        return [p for p in params if p.requires_grad]

    def all_task_parameters(self, tasks: Sequence[str] | None = None) -> list[nn.Parameter]:
        return [p for t in (tasks or self.task_names) for p in self.task_parameters(t)]


def _add(total: Tensor | None, extra: Tensor | None) -> Tensor | None:
    if extra is None:
        return total
    return extra if total is None else total + extra


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """`params` without repeats, in first-seen order."""
    seen: set[int] = set()
    kept = []
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            kept.append(param)
    return kept
