"""The engine's fast paths give what the general paths give: the two-task closed forms of
the solvers, the cached graph analysis (hit, and miss on a changed graph), the heads'
gradients taken with the per-task cut gradients, and the explicit per-task weight gradients
kept between `gramian()` and `accumulate()`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import polytask.balance as balance
from polytask.balance import engine, gramian, solvers
from polytask.balance.aggregation import cagrad, imtl_g
from polytask.balance.jacobian import task_jacobian

from .helpers import TinyMultiTask, batch, flat_grads


def pair_jacobians() -> list[np.ndarray]:
    """2 x P task gradients: random, of unequal scales, conflicting, nearly opposite,
    orthogonal, identical, and with one zero gradient."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(30):
        jac = rng.standard_normal((2, 9)) * rng.uniform(1e-3, 1e3, (2, 1))
        if k % 3 == 0:
            jac[1] = -rng.uniform(0.2, 3.0) * jac[0] + 0.3 * rng.standard_normal(9)
        out.append(jac)
    out.append(np.array([[1.0, 0.0], [-1.0, 1e-4]]))
    out.append(np.array([[1.0, 0.0], [0.0, 2.0]]))
    out.append(np.array([[1.0, 2.0], [1.0, 2.0]]))
    out.append(np.array([[1.0, 2.0], [0.0, 0.0]]))
    return out


GENERAL: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "mgda": lambda mp: mp.setattr(solvers, "min_norm_pair", lambda g: None),
    "upgrad": lambda mp: mp.setattr(solvers, "project_pair", lambda g, u: None),
    "dualproj": lambda mp: mp.setattr(solvers, "project_pair", lambda g, u: None),
    "imtl_g": lambda mp: mp.setattr(imtl_g, "impartial_pair", lambda g, n: None),
    "nash_mtl": lambda mp: mp.setattr(solvers, "nash_pair", lambda g: None),
    "cagrad": lambda mp: mp.setattr(cagrad, "minimize_on_simplex", solvers.slsqp_on_simplex),
}


@pytest.mark.parametrize("name", sorted(GENERAL))
def test_two_task_closed_forms_match_the_general_solvers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gramians = [torch.tensor(j @ j.T, dtype=torch.float64) for j in pair_jacobians()]
    method = balance.get(name).method
    fast = [method.gramian_weights(g) for g in gramians]
    GENERAL[name](monkeypatch)
    general = [method.gramian_weights(g) for g in gramians]
    # SLSQP (CAGrad's general solver) stops at ftol 1e-12 on the objective, so its weights
    # are good to about 1e-6 only; the closed form is the exact minimiser (next test)
    tol = 1e-5 if name == "cagrad" else 1e-6
    for g, a, b in zip(gramians, fast, general, strict=True):
        if name == "nash_mtl" and g[0, 1] ** 2 > 0.999 * g[0, 0] * g[1, 1]:
            continue  # ill-conditioned: Newton's stopping rule, not the answer, differs
        if name == "cagrad" and g[1, 1] == 0:
            # a zero gradient: every update in CAGrad's ball is optimal; SLSQP stops near
            # |g_w| = 0 and puts a weight of 1e15 on the zero gradient, the closed form
            # reaches |g_w| = 0 and keeps the mean
            continue
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max())), (g, a, b)


RADIUS = 0.4


def test_the_two_task_cagrad_solution_is_the_exact_minimiser() -> None:
    for jac in pair_jacobians():
        g, _ = solvers.normalized(jac @ jac.T)
        b = g @ np.full(2, 0.5)

        def objective(w: np.ndarray, b: np.ndarray = b, g: np.ndarray = g) -> float:
            return float(w @ b + RADIUS * np.sqrt(w @ g @ w + 1e-12))

        def gradient(w: np.ndarray, b: np.ndarray = b, g: np.ndarray = g) -> np.ndarray:
            return b + RADIUS * (g @ w) / np.sqrt(w @ g @ w + 1e-12)

        best = solvers.minimize_on_pair(gradient)
        grid = min(objective(np.array([s, 1 - s])) for s in np.linspace(0, 1, 2001))
        assert objective(best) <= grid + 1e-12
        slsqp = solvers.slsqp_on_simplex(objective, gradient, 2)
        assert objective(best) <= objective(slsqp) + 1e-12


def test_two_task_nash_weights_solve_the_bargaining_condition() -> None:
    for jac in pair_jacobians()[:30]:
        gram = jac @ jac.T
        alpha = solvers.nash_bargaining(gram)
        g = gram / np.linalg.norm(gram) + solvers.RELATIVE_EPS * np.eye(2)
        assert np.allclose(g @ alpha, 1.0 / alpha, rtol=1e-9)


def test_closed_forms_hand_degenerate_gramians_back() -> None:
    same = np.array([[1.0, 1.0], [1.0, 1.0]])
    indefinite = np.array([[1.0, -1.0 - 1e-9], [-1.0 - 1e-9, 1.0]])
    assert solvers.min_norm_pair(same) is None
    assert solvers.min_norm_pair(indefinite) is None
    assert solvers.project_pair(indefinite, np.full(2, 0.5)) is None
    assert imtl_g.impartial_pair(same, np.ones(2)) is None


def model_and_step(tasks: int = 3) -> tuple[TinyMultiTask, Callable[..., None]]:
    model = TinyMultiTask(tasks=tasks, width=12, inputs=5).double()

    def step(method: str, x: Tensor, y: Tensor, **kwargs: object) -> None:
        model.zero_grad()
        losses, _ = model.losses(x, y)
        balance.backward(losses, model.shared(), balance.get(method), **kwargs)

    return model, step


def float64_batch(tasks: int = 3, inputs: int = 5) -> tuple[Tensor, Tensor]:
    x, y = batch(tasks=tasks, size=16, inputs=inputs)
    return x.double(), y.double()


def all_grads(model: nn.Module) -> Tensor:
    return flat_grads(list(model.parameters()))


@pytest.mark.parametrize("method", ["upgrad", "mgda", "pcgrad", "graddrop"])
def test_a_cache_hit_gives_the_fresh_analysis_result(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, step = model_and_step()
    x, y = float64_batch()
    engine._ANALYSES.clear()
    step(method, x, y)  # a miss: analysed and remembered
    walks = []
    monkeypatch.setattr(engine, "find_shared_graph",
                        lambda *a: walks.append(1) or engine.SharedGraph([], None, None))
    torch.manual_seed(0)
    step(method, x, y)  # a hit: find_shared_graph is not called
    hit = all_grads(model)
    assert not walks
    monkeypatch.undo()
    engine._ANALYSES.clear()
    torch.manual_seed(0)
    step(method, x, y)
    assert torch.allclose(hit, all_grads(model), rtol=1e-9, atol=1e-12)


class Switchable(TinyMultiTask):
    """A trunk that can add a skip path from the input to the features (a new graph: the
    first layer's output is then no longer crossed by every path), or scale its second
    product inside `addmm` (the same graph structure, but no longer a plain linear layer)."""

    def __init__(self) -> None:
        super().__init__(tasks=2, width=6, inputs=6)
        self.double()
        self.skip = False
        self.alpha = 1.0

    def losses(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        first, second = self.trunk[0], self.trunk[2]
        h = torch.relu(first(x))
        h = torch.addmm(second.bias, h, second.weight.t(), alpha=self.alpha)
        if self.skip:
            h = h + first.weight.sum() * x
        features = torch.relu(h)
        losses = {n: ((head(features).squeeze(-1) - y[:, i]) ** 2).mean()
                  for i, (n, head) in enumerate(zip(self.names, self.heads, strict=True))}
        return losses, features


@pytest.mark.parametrize("change", ["skip", "alpha"])
def test_a_changed_graph_is_analysed_afresh(change: str) -> None:
    model = Switchable()
    x, y = float64_batch(tasks=2, inputs=6)
    engine._ANALYSES.clear()

    def grads_and_truth() -> tuple[Tensor, Tensor]:
        model.zero_grad()
        losses, _ = model.losses(x, y)
        ordered = list(losses.values())
        jacobian = task_jacobian(ordered, model.shared())
        w = balance.MGDA().gramian_weights(jacobian @ jacobian.T)
        balance.backward(losses, model.shared(), balance.MGDA())
        return flat_grads(model.shared()), w @ jacobian

    grads_and_truth()
    setattr(model, change, True if change == "skip" else 2.0)
    got, truth = grads_and_truth()
    assert torch.allclose(got, truth, rtol=1e-9, atol=1e-12)
    if change == "skip":
        assert len(engine._ANALYSES) == 2  # a new structure: a second entry


def test_heads_get_the_summed_gradient_with_the_cut_rows() -> None:
    """A task-specific parameter read by two tasks gets the sum of their gradients."""
    model = TinyMultiTask(tasks=3, width=8).double()
    extra = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    x, y = float64_batch()
    losses, _ = model.losses(x, y)
    losses = {n: loss * extra if n != "t2" else loss for n, loss in losses.items()}
    truth = torch.autograd.grad(sum(losses.values()), [extra, *model.task_params()],
                                retain_graph=True)
    balance.backward(losses, model.shared(), balance.get("upgrad"))
    assert torch.allclose(extra.grad, truth[0])
    for p, g in zip(model.task_params(), truth[1:], strict=True):
        assert torch.allclose(p.grad, g)


@pytest.mark.parametrize("keep", [gramian.KEEP_ENTRIES, 0])
def test_kept_explicit_gradients_give_the_recomputed_update(
    keep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gramian, "KEEP_ENTRIES", keep)
    model = TinyMultiTask(tasks=3, width=8, inputs=5).double()  # d_in < batch: explicit
    x, y = float64_batch()
    losses, _ = model.losses(x, y)
    ordered = list(losses.values())
    jacobian = task_jacobian(ordered, model.shared())
    grads = gramian.TaskGradients(ordered, model.shared())
    assert torch.allclose(grads.gramian(), jacobian @ jacobian.T, rtol=1e-10)
    assert bool(grads.explicit) == (keep > 0)
    w = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    grads.accumulate(w)
    assert torch.allclose(flat_grads(model.shared()), w @ jacobian, rtol=1e-10, atol=1e-12)
