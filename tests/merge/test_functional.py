"""Properties of the pure merging primitives (polytask.merge.functional)."""

from __future__ import annotations

import pytest
import torch

from polytask.merge import functional as Fm


def _experts(count: int = 3, shape: tuple[int, ...] = (6, 5), seed: int = 0
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator, dtype=torch.float64)
    return base, [base + torch.randn(shape, generator=generator, dtype=torch.float64)
                  for _ in range(count)]


def test_identical_experts_merge_to_that_expert() -> None:
    base, (expert, *_) = _experts()
    same = [expert.clone() for _ in range(3)]
    assert torch.allclose(Fm.task_arithmetic(base, same, 1 / 3), expert)
    assert torch.allclose(Fm.ties(base, same, density=1.0, scale=1.0), expert)
    assert torch.allclose(Fm.dare(base, same, 1.0, 1.0, None, combine="ties"), expert)
    grams = [torch.eye(5, dtype=torch.float64)] * 3
    assert torch.allclose(Fm.regmean(same, grams, alpha=0.5), expert)


def test_task_arithmetic_with_zero_scale_is_the_base() -> None:
    base, experts = _experts()
    assert torch.equal(Fm.task_arithmetic(base, experts, 0.0), base)


def test_ties_with_density_one_and_no_conflict_is_task_arithmetic_of_the_mean() -> None:
    """Without sign conflicts and without trimming, TIES's disjoint mean is the mean of the
    task vectors, so TIES with λ equals task arithmetic (a sum) with λ / N."""
    base, _ = _experts()
    generator = torch.Generator().manual_seed(1)
    sign = torch.randn(6, 5, generator=generator, dtype=torch.float64).sign()
    experts = [base + sign * torch.rand(6, 5, generator=generator, dtype=torch.float64).add(0.1)
               for _ in range(3)]
    merged = Fm.ties(base, experts, density=1.0, scale=0.8)
    assert torch.allclose(merged, Fm.task_arithmetic(base, experts, 0.8 / 3))


def test_trim_keeps_floor_of_density_times_n_per_task_vector() -> None:
    vectors = torch.randn(3, 7, 3)  # 21 entries per task vector
    kept = Fm.trim(vectors, 0.5)
    assert [int((row != 0).sum()) for row in kept] == [10, 10, 10]
    for row, original in zip(kept, vectors, strict=True):
        smallest_kept = row[row != 0].abs().min()
        assert (original.abs()[row == 0] <= smallest_kept).all()


def test_elected_sign_on_a_zero_total() -> None:
    vectors = torch.tensor([[1.0, -2.0, -3.0], [-1.0, 1.0, 1.0]])  # totals 0, -1, -2
    assert Fm.elect_sign(vectors, "positive").tolist() == [1.0, -1.0, -1.0]
    assert Fm.elect_sign(vectors, "majority").tolist() == [-1.0, -1.0, -1.0]


def test_ties_weights_multiply_after_the_election_unless_asked() -> None:
    base = torch.zeros(1)
    experts = [torch.tensor([1.0]), torch.tensor([-3.0])]
    # unweighted total -2 elects -, so only the second expert's -3 · 0.1 is kept
    assert Fm.ties(base, experts, 1.0, 1.0, weights=[1.0, 0.1]).item() == pytest.approx(-0.3)
    # weighted total 1 - 0.3 > 0 elects +, keeping the first expert's 1 · 1
    weighted = Fm.ties(base, experts, 1.0, 1.0, weights=[1.0, 0.1], weighted_election=True)
    assert weighted.item() == pytest.approx(1.0)


def test_dare_expectation_over_seeds_is_the_undropped_merge() -> None:
    base, experts = _experts(count=2, shape=(4, 4))
    draws = 4000
    generator = torch.Generator().manual_seed(0)
    mean = sum(Fm.dare(base, experts, 0.3, 0.5, generator) for _ in range(draws)) / draws
    undropped = Fm.task_arithmetic(base, experts, 0.5)
    # each dropped entry has std ≈ |τ| · sqrt((1-p)/p); the mean's std is that / sqrt(draws)
    vectors = Fm.task_vectors(base, experts)
    std = 0.5 * vectors.square().sum(0).sqrt() * ((0.7 / 0.3) / draws) ** 0.5
    assert ((mean - undropped).abs() <= 5 * std + 1e-9).all()


def test_dare_is_reproducible_from_its_generator() -> None:
    base, experts = _experts()
    first = Fm.dare(base, experts, 0.5, 1.0, torch.Generator().manual_seed(3), combine="ties")
    second = Fm.dare(base, experts, 0.5, 1.0, torch.Generator().manual_seed(3), combine="ties")
    assert torch.equal(first, second)


def test_regmean_with_one_expert_returns_it_even_with_a_singular_gram() -> None:
    _, (weight, *_) = _experts(count=1, shape=(3, 4))
    inputs = torch.randn(2, 4, dtype=torch.float64)  # 2 rows: a rank-2 Gram of a 4-dim input
    merged = Fm.regmean([weight], [inputs.T @ inputs], alpha=0.7, ridge=1e-6)
    assert torch.allclose(merged, weight)


def test_regmean_with_alpha_zero_and_equal_grams_is_the_average() -> None:
    _, experts = _experts(count=3, shape=(3, 4))
    inputs = torch.randn(10, 4, dtype=torch.float64)
    grams = [inputs.T @ inputs] * 3
    assert torch.allclose(Fm.regmean(experts, grams, alpha=0.0),
                          torch.stack(experts).mean(0))


def test_regmean_minimises_the_summed_output_error() -> None:
    """With α = 1, W minimises Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖²: the least-squares solution on the
    stacked inputs and the stacked expert outputs (nn.Linear's (out, in) convention)."""
    _, experts = _experts(count=2, shape=(3, 4))
    inputs = [torch.randn(8, 4, dtype=torch.float64) for _ in experts]
    merged = Fm.regmean(experts, [x.T @ x for x in inputs], alpha=1.0)
    stacked_x = torch.cat(inputs)
    stacked_y = torch.cat([x @ w.T for x, w in zip(inputs, experts, strict=True)])
    least_squares = torch.linalg.lstsq(stacked_x, stacked_y).solution.T
    assert torch.allclose(merged, least_squares)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_the_unit_interval_is_refused(density: float) -> None:
    base, experts = _experts()
    with pytest.raises(ValueError, match="density"):
        Fm.ties(base, experts, density, 1.0)
    with pytest.raises(ValueError, match="density"):
        Fm.dare(base, experts, density, 1.0, None)
