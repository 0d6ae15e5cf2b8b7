"""Each aggregator's defining property on random matrices, and golden values by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor
from torchjd import aggregation
from torchjd.linalg import QuadprogProjector

import polytask.balance as balance
from polytask.balance.aggregation.aligned_mtl import AlignedMTL

from .helpers import AsAggregator, random_jacobian

SPECS = [(2, 7, 2, 1.0, 0), (3, 12, 3, 1e-8, 1), (4, 20, 2, 1e8, 2), (5, 9, 5, 1.0, 3),
         (6, 30, 1, 1e3, 4), (4, 10, 4, 1e-4, 5)]
FULL_RANK = [s for s in SPECS if s[2] == s[0]]


def agg(name: str, **kwargs: object) -> AsAggregator:
    return AsAggregator(balance.get(name, **kwargs).method)


def gramian_weights(name: str, jacobian: Tensor) -> Tensor:
    out = balance.get(name).method
    assert isinstance(out, balance.GramianWeighting)
    return out.gramian_weights(jacobian @ jacobian.T)


@pytest.mark.parametrize("seed", range(5))
def test_pcgrad_leaves_no_conflict_between_two_tasks(seed: int) -> None:
    jacobian = random_jacobian(2, 6, 2, 1.0, seed)
    jacobian[1] = -jacobian[0] + 0.3 * jacobian[1]  # make them conflict
    update = agg("pcgrad").aggregate(jacobian)
    assert (jacobian @ update >= -1e-12).all()


@pytest.mark.parametrize("spec", SPECS)
def test_mgda_is_the_min_norm_point_of_the_hull(spec: tuple[int, int, int, float, int]) -> None:
    jacobian = random_jacobian(*spec)
    scale = spec[3] ** 2
    g = jacobian @ jacobian.T
    w = gramian_weights("mgda", jacobian)
    assert (w >= 0).all() and float(w.sum()) == pytest.approx(1.0)
    # KKT: (G w)_t >= wᵀGw for every t, with equality where w_t > 0
    gw, value = g @ w, w @ g @ w
    assert (gw >= value - 1e-9 * scale).all()
    assert torch.allclose(gw[w > 1e-9], value.expand(int((w > 1e-9).sum())), atol=1e-9 * scale)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@pytest.mark.parametrize("spec", SPECS)
def test_never_conflicts_with_a_task(name: str, spec: tuple[int, int, int, float, int]) -> None:
    jacobian = random_jacobian(*spec)
    update = agg(name).aggregate(jacobian)
    assert (jacobian @ update >= -1e-9 * spec[3] ** 2).all()


def cosines(jacobian: Tensor, update: Tensor) -> Tensor:
    return (jacobian @ update) / (jacobian.norm(dim=1) * update.norm())


@pytest.mark.parametrize("spec", FULL_RANK)
def test_config_has_equal_cosines(spec: tuple[int, int, int, float, int]) -> None:
    jacobian = random_jacobian(*spec)
    cos = cosines(jacobian, agg("config").aggregate(jacobian))
    assert torch.allclose(cos, cos.mean().expand_as(cos), atol=1e-8) and (cos > 0).all()


@pytest.mark.parametrize("spec", FULL_RANK)
def test_imtl_g_has_equal_projections(spec: tuple[int, int, int, float, int]) -> None:
    jacobian = random_jacobian(*spec)
    update = agg("imtl_g").aggregate(jacobian)
    proj = (jacobian @ update) / jacobian.norm(dim=1)
    assert torch.allclose(proj, proj.mean().expand_as(proj), rtol=1e-8)
    assert float(gramian_weights("imtl_g", jacobian).sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("spec", SPECS)
def test_aligned_system_has_condition_number_one(spec: tuple[int, int, int, float, int]) -> None:
    jacobian = random_jacobian(*spec)
    aligned = torch.as_tensor(AlignedMTL().alignment(jacobian @ jacobian.T)) @ jacobian
    singular = torch.linalg.svdvals(aligned)[: spec[2]]
    assert float(singular.max() / singular.min()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("spec", FULL_RANK)
def test_nash_mtl_weights_satisfy_the_bargaining_condition(
    spec: tuple[int, int, int, float, int],
) -> None:
    jacobian = random_jacobian(*spec)
    g = jacobian @ jacobian.T
    alpha = gramian_weights("nash_mtl", jacobian)
    assert (alpha > 0).all()
    # the weights solve (G/|G|_F) α = 1/α, i.e. G β = 1/β for β = α / sqrt(|G|_F)
    beta = alpha / torch.linalg.norm(g) ** 0.5
    assert torch.allclose(g @ beta, 1 / beta, rtol=1e-8)


def test_cagrad_with_c_zero_is_the_mean() -> None:
    jacobian = random_jacobian(4, 9, 3, 1.0, 0)
    assert torch.allclose(agg("cagrad", c=0.0).aggregate(jacobian), jacobian.mean(0))


@pytest.mark.parametrize("spec", SPECS)
def test_cagrad_improves_the_worst_task_over_the_mean(
    spec: tuple[int, int, int, float, int],
) -> None:
    jacobian = random_jacobian(*spec)
    update = agg("cagrad", c=0.5, rescale=False).aggregate(jacobian)
    mean = jacobian.mean(0)
    assert (jacobian @ update).min() >= (jacobian @ mean).min() - 1e-9 * spec[3] ** 2
    assert float((update - mean).norm()) <= 0.5 * float(mean.norm()) * (1 + 1e-6)


def test_gradvac_first_step_on_two_tasks_is_pcgrad() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(agg("gradvac").aggregate(jacobian), agg("pcgrad").aggregate(jacobian))


def test_gradvac_targets_track_the_cosines() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    method = balance.GradVac(beta=0.5)
    method.gramian_weights(jacobian @ jacobian.T)
    assert method.targets is not None
    assert float(method.targets[0, 1]) == pytest.approx(0.5 / math.sqrt(2))


H = 1 / math.sqrt(2)
GOLDEN = [
    ("pcgrad", [[1.0, 0.0], [-1.0, 1.0]], [0.5, 1.5]),
    ("mgda", [[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5]),
    ("mgda", [[2.0, 0.0], [1.0, 1.0]], [1.0, 1.0]),
    ("upgrad", [[1.0, 0.0], [-1.0, 1.0]], [0.25, 0.75]),
    ("upgrad", [[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5]),
    ("dualproj", [[1.0, 0.0], [-1.0, 1.0]], [0.0, 0.5]),
    ("imtl_g", [[1.0, 0.0], [0.0, 2.0]], [2 / 3, 2 / 3]),
    ("config", [[1.0, 0.0], [0.0, 2.0]], [1.5, 1.5]),
    ("aligned_mtl", [[1.0, 0.0], [0.0, 2.0]], [1.0, 1.0]),
    ("nash_mtl", [[1.0, 0.0], [0.0, 2.0]], [17**0.25, 17**0.25]),
    ("graddrop", [[1.0, -1.0], [2.0, -3.0]], [3.0, -4.0]),
    ("cagrad", [[1.0, 0.0], [0.0, 1.0]], [(0.5 + 0.4 * H * H) / 1.16] * 2),
]


@pytest.mark.parametrize(("name", "matrix", "expected"), GOLDEN)
def test_golden_values(name: str, matrix: list[list[float]], expected: list[float]) -> None:
    update = agg(name).aggregate(torch.tensor(matrix, dtype=torch.float64))
    assert update.tolist() == pytest.approx(expected, rel=1e-6)


def torchjd_twin(name: str, tasks: int) -> tuple[AsAggregator, object]:
    """Our aggregator and torchjd's, configured to compute the same thing (torchjd's
    projector regularisation off; Aligned-MTL with torchjd's mean preference)."""
    exact = {"projector": QuadprogProjector(reg_eps=0.0, norm_eps=0.0)}
    twins = {
        "upgrad": (agg("upgrad"), lambda: aggregation.UPGrad(**exact)),
        "dualproj": (agg("dualproj"), lambda: aggregation.DualProj(**exact)),
        "imtl_g": (agg("imtl_g"), aggregation.IMTLG),
        "config": (agg("config"), aggregation.ConFIG),
        "aligned_mtl": (agg("aligned_mtl", task_weights=[1 / tasks] * tasks),
                        aggregation.AlignedMTL),
        "pcgrad": (agg("pcgrad"), aggregation.PCGrad),
    }
    ours, theirs = twins[name]
    return ours, theirs()


#: PCGrad visits the tasks in a random order, so it only matches torchjd for two tasks.
TORCHJD_CASES = [(name, spec)
                 for name in ("upgrad", "dualproj", "imtl_g", "config", "aligned_mtl", "pcgrad")
                 for spec in FULL_RANK if name != "pcgrad" or spec[0] == 2]


@pytest.mark.parametrize(("name", "spec"), TORCHJD_CASES)
def test_matches_torchjd(name: str, spec: tuple[int, int, int, float, int]) -> None:
    jacobian = random_jacobian(*spec[:3], 1.0, spec[4])
    ours, theirs = torchjd_twin(name, spec[0])
    assert np.allclose(ours.aggregate(jacobian).numpy(), theirs(jacobian).numpy(),  # type: ignore[operator]
                       rtol=1e-6, atol=1e-9)


def test_mgda_is_at_least_as_good_as_torchjd_frank_wolfe() -> None:
    for seed in range(5):
        jacobian = random_jacobian(5, 12, 4, 1.0, seed)
        ours = agg("mgda").aggregate(jacobian)
        theirs = aggregation.MGDA(epsilon=1e-6, max_iters=1000)(jacobian)
        assert float(ours.norm()) <= float(theirs.norm()) * (1 + 1e-9)
        assert torch.allclose(ours, theirs, atol=1e-2)
