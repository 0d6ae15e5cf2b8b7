"""Cross-check of polytask.merge.functional against PEFT's `peft.utils.merge_utils`.

Convention differences, and how each comparison bridges them:

- PEFT takes task vectors and returns the merged task vector; polytask takes the base and the
  experts and returns ``base + scale · merged``. The tests pass ``expert = base + τ`` and
  compare ``result − base`` with ``scale = 1``; PEFT has no λ (its per-task `weights` play
  that role), so λ is checked by scaling.
- Trimming: both keep ``k = ⌊density · n⌋`` entries per tensor by magnitude with `topk` (equal
  magnitudes could be broken differently; random tensors have none).
- Sign election: PEFT's ``majority_sign_method="total"`` is polytask's default (unweighted
  trimmed vectors, ``Σ ≥ 0`` elects +, i.e. ``zero_sign="positive"``); PEFT's
  ``"frequency"`` has no polytask equivalent, and polytask's ``zero_sign="majority"`` and
  ``weighted_election=True`` have no PEFT equivalent.
- Weights: both multiply after trimming and after the election; both disjoint means divide by
  the number of agreeing (nonzero) entries, not by the sum of their weights.
- DARE: PEFT draws its Bernoulli masks from the global generator, polytask from the
  generator it is given; seeding both alike gives the same masks, drawn task by task.
- PEFT skips pruning (with a warning) at density 1; polytask keeps everything too.
"""

from __future__ import annotations

import pytest
import torch

from polytask.merge import functional as Fm

merge_utils = pytest.importorskip("peft.utils.merge_utils",
                                  reason="peft is not installed (pip install peft)")

WEIGHTS = [0.7, 1.3, 0.4]


def _experts(shape: tuple[int, ...] = (12, 10)) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=generator)
    return base, [base + torch.randn(shape, generator=generator) for _ in WEIGHTS]


def _vectors(base: torch.Tensor, experts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [expert - base for expert in experts]


def test_task_arithmetic_matches_peft() -> None:
    base, experts = _experts()
    theirs = merge_utils.task_arithmetic(_vectors(base, experts), torch.tensor(WEIGHTS))
    ours = Fm.task_arithmetic(base, experts, 1.0, weights=WEIGHTS) - base
    assert torch.allclose(ours, theirs, atol=1e-5)
    scaled = Fm.task_arithmetic(base, experts, 0.3, weights=WEIGHTS) - base
    assert torch.allclose(scaled, 0.3 * theirs, atol=1e-5)


@pytest.mark.parametrize("density", [0.2, 0.5, 0.9])
def test_ties_matches_peft(density: float) -> None:
    base, experts = _experts()
    theirs = merge_utils.ties(_vectors(base, experts), torch.tensor(WEIGHTS), density,
                              majority_sign_method="total")
    ours = Fm.ties(base, experts, density, 1.0, weights=WEIGHTS) - base
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize(("combine", "peft_name"), [("linear", "dare_linear"),
                                                    ("ties", "dare_ties")])
def test_dare_matches_peft_with_the_same_masks(combine: str, peft_name: str) -> None:
    base, experts = _experts()
    torch.manual_seed(11)
    theirs = getattr(merge_utils, peft_name)(_vectors(base, experts), torch.tensor(WEIGHTS), 0.3)
    generator = torch.Generator().manual_seed(11)
    ours = Fm.dare(base, experts, 0.3, 1.0, generator, combine=combine, weights=WEIGHTS) - base
    assert torch.allclose(ours, theirs, atol=1e-5)
