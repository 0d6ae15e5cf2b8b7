"""MultiTaskModel: backbone -> sharing architecture -> one head per task."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from polytask.models.inputs import Encoded
from polytask.models.sharing import SharingArchitecture
from polytask.models.sharing.hard_sharing import HardSharing


class MultiTaskModel(nn.Module):
    """A shared backbone, a sharing architecture and per-task heads.

    `forward({task: inputs})` returns `{task: head output}`. Tasks whose inputs are the
    same object (one dataset labelled for several tasks) share one backbone pass.
    The backbone is any `nn.Module`: polytask's own take `(inputs, level)`; a module whose
    `forward` has no `level` parameter is called with the inputs alone. Its feature width is
    its `output_dim` attribute, or `feature_dim`.
    `levels` says which tasks read token features (`"token"`) instead of sentence features.
    After a forward, `representation` is the one tensor every task's head read, when there
    is one (hard sharing over a shared batch), for balancers that work on features.
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Mapping[str, nn.Module],
        architecture: SharingArchitecture | None = None,
        levels: Mapping[str, str] | None = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.task_names = list(heads)
        width = feature_dim or getattr(backbone, "output_dim", None)
        if architecture is None and width is None:
            raise ValueError("MultiTaskModel: give `feature_dim` (the backbone's output width) "
                             "or a backbone with an `output_dim` attribute")
        self.architecture = architecture or HardSharing(int(width), self.task_names)
        self._passes_level = "level" in inspect.signature(backbone.forward).parameters
        self.heads = nn.ModuleDict(heads)
        self.levels = {t: (levels or {}).get(t, "sequence") for t in self.task_names}
        self.representation: Tensor | None = None

    def forward(self, inputs_by_task: Mapping[str, Encoded | Tensor]) -> dict[str, Tensor]:
        groups: dict[tuple[int, str], list[str]] = {}
        for task, inputs in inputs_by_task.items():
            groups.setdefault((id(inputs), self.levels[task]), []).append(task)
        outputs: dict[str, Tensor] = {}
        representations: dict[str, Tensor] = {}
        for (_, level), tasks in groups.items():
            inputs = inputs_by_task[tasks[0]]
            features = self.backbone(inputs, level) if self._passes_level else self.backbone(inputs)
            representations.update(self.architecture(features, tasks))
        for task in inputs_by_task:
            outputs[task] = self.heads[task](representations[task])
        unique = {id(r) for r in representations.values()}
        self.representation = next(iter(representations.values())) if len(unique) == 1 else None
        return outputs

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters used by more than one task (backbone + shared architecture)."""
        params = list(self.backbone.parameters()) + list(self.architecture.shared_parameters())
        return [p for p in params if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Trainable parameters only `task` uses (its head and private architecture parts)."""
        params = list(self.architecture.task_parameters(task)) + list(self.heads[task].parameters())
        return [p for p in params if p.requires_grad]

    def all_task_parameters(self, tasks: Sequence[str] | None = None) -> list[nn.Parameter]:
        return [p for t in (tasks or self.task_names) for p in self.task_parameters(t)]

    def auxiliary_loss(self) -> Tensor | None:
        return self.architecture.auxiliary_loss()
