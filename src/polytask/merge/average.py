"""Weight averaging (a uniform model soup)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from polytask.merge import functional
from polytask.merge.base import MERGERS, TensorwiseMerger


@MERGERS.register("average", paper="Model soups: averaging weights of multiple fine-tuned "
                  "models improves accuracy without increasing inference time (Wortsman et "
                  "al. 2022)")
class Average(TensorwiseMerger):
    """The mean of the experts' weights (no hyperparameter). Equal to task arithmetic with
    λ = 1/N."""

    def merge_tensor(self, name: str, base: Tensor, experts: Sequence[Tensor]) -> Tensor:
        return functional.average(experts)
