"""Loss weightings: formulas by hand, learned parameters, and FAMO's O(1) promise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import polytask.balance as balance


def leaf_losses(values: list[float]) -> tuple[dict[str, Tensor], Tensor]:
    """Losses that are the leaves themselves (d loss_t / d leaf_t = 1)."""
    leaf = torch.tensor(values, requires_grad=True)
    return {f"t{i}": leaf[i] for i in range(len(values))}, leaf


def test_ew_is_the_mean() -> None:
    losses, leaf = leaf_losses([1.0, 2.0, 4.0])
    w = balance.backward(losses, [], balance.get("ew")).weights
    assert w == pytest.approx({"t0": 1 / 3, "t1": 1 / 3, "t2": 1 / 3})
    assert torch.allclose(leaf.grad, torch.full((3,), 1 / 3))


def test_fixed_uses_the_given_weights_and_names_missing_tasks() -> None:
    b = balance.get("fixed", weights={"t0": 2.0, "t1": 0.5})
    losses, leaf = leaf_losses([1.0, 1.0])
    assert balance.backward(losses, [], b).weights == {"t0": 2.0, "t1": 0.5}
    assert leaf.grad.tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match="t2"):
        b.setup(["t0", "t2"])


def minimise(balancer: balance.Balancer, values: list[float], steps: int) -> None:
    opt = torch.optim.SGD(balancer.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        losses, _ = leaf_losses(values)
        balance.backward(losses, [], balancer)
        opt.step()


def test_uw_learns_the_log_variances() -> None:
    b = balance.get("uw")
    b.setup(["t0", "t1"])
    minimise(b, [4.0, 0.25], 400)  # optimum of exp(-s) L + s is s = log L
    expected = [math.log(4.0), math.log(0.25)]
    assert b.method.log_vars.detach().tolist() == pytest.approx(expected, abs=1e-3)
    fresh = balance.get("uw")
    fresh.setup(["t0", "t1"])
    fresh.load_state_dict(b.state_dict())
    assert torch.equal(fresh.method.log_vars, b.method.log_vars)


def test_uw_needs_setup() -> None:
    losses, _ = leaf_losses([1.0])
    with pytest.raises(RuntimeError, match="setup"):
        balance.backward(losses, [], balance.get("uw"))


def test_imtl_l_makes_scaled_losses_one() -> None:
    b = balance.get("imtl_l")
    b.setup(["t0", "t1"])
    minimise(b, [4.0, 0.5], 400)  # optimum of exp(s) L - s is exp(s) L = 1
    scaled = torch.exp(b.method.scales.detach()) * torch.tensor([4.0, 0.5])
    assert scaled.tolist() == pytest.approx(
        [1.0, 1.0], abs=1e-3
    )


def test_dwa_formula_by_hand() -> None:
    b = balance.get("dwa", temperature=2.0)
    steps = [[1.0, 2.0], [0.5, 2.0], [0.4, 2.0]]
    seen = []
    for values in steps:
        losses, _ = leaf_losses(values)
        seen.append(balance.backward(losses, [], b).weights)
    assert seen[0] == seen[1] == {"t0": 1.0, "t1": 1.0}
    r = torch.tensor([0.5 / 1.0, 2.0 / 2.0])
    expected = 2 * torch.softmax(r / 2.0, 0)
    assert [seen[2]["t0"], seen[2]["t1"]] == pytest.approx(expected.tolist())


def test_igb_formula_by_hand() -> None:
    b = balance.get("igb", temperature=1.0, reference_steps=1)
    losses, _ = leaf_losses([2.0, 4.0])
    assert balance.backward(losses, [], b).weights == {"t0": 1.0, "t1": 1.0}
    losses, _ = leaf_losses([1.0, 4.0])
    w = balance.backward(losses, [], b).weights
    expected = 2 * torch.softmax(torch.tensor([0.5, 1.0]), 0)
    assert [w["t0"], w["t1"]] == pytest.approx(expected.tolist())


def test_gls_is_the_gradient_of_the_geometric_mean() -> None:
    losses, leaf = leaf_losses([1.0, 4.0])
    w = balance.backward(losses, [], balance.get("gls")).weights
    # d sqrt(a b) / da = sqrt(b/a)/2
    assert leaf.grad.tolist() == pytest.approx([1.0, 0.25])
    assert [w["t0"], w["t1"]] == pytest.approx([1.0, 0.25])
    with pytest.raises(ValueError, match="positive"):
        balance.backward(leaf_losses([0.0, 1.0])[0], [], balance.get("gls"))


def test_rlw_draws_from_its_generator_and_resumes() -> None:
    def run(b: balance.Balancer, n: int) -> list[dict[str, float]]:
        return [balance.backward(leaf_losses([1.0, 1.0, 1.0])[0], [], b).weights
                for _ in range(n)]

    a = balance.get("rlw", generator=torch.Generator().manual_seed(3))
    b = balance.get("rlw", generator=torch.Generator().manual_seed(3))
    first = run(a, 3)
    assert first == run(b, 3)
    assert sum(first[0].values()) == pytest.approx(1.0)
    assert first[0] != first[1]
    c = balance.get("rlw")
    c.load_state_dict(a.state_dict())
    assert run(a, 2) == run(c, 2)
    torch.manual_seed(11)
    d = balance.get("rlw")
    torch.manual_seed(11)
    assert run(d, 2) == run(balance.get("rlw"), 2)  # seeded from the global RNG


def test_famo_never_computes_task_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("FAMO called torch.autograd.grad")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    b = balance.get("famo", lr=0.1)
    b.setup(["t0", "t1"])
    x = nn.Parameter(torch.tensor([1.0, 1.0]))
    for _ in range(5):
        losses = {"t0": x[0] ** 2, "t1": x[1] ** 2}
        w = balance.backward(losses, [x], b).weights
        assert sum(w.values()) == pytest.approx(1.0)
        x.grad = None
        # t0 improves a lot, t1 not at all: t1 must gain weight
        b.after_step(lambda: {"t0": torch.tensor(0.5), "t1": torch.tensor(1.0)})
    assert w["t1"] > w["t0"]
    fresh = balance.get("famo")
    fresh.setup(["t0", "t1"])
    fresh.load_state_dict(b.state_dict())
    assert torch.equal(fresh.method.logits, b.method.logits)


def test_famo_gradient_is_the_weighted_sum() -> None:
    losses, leaf = leaf_losses([1.0, 3.0])
    w = balance.backward(losses, [], balance.get("famo")).weights
    assert leaf.grad.tolist() == pytest.approx([w["t0"], w["t1"]])
    assert w["t0"] == pytest.approx(0.75)  # z = 1/2 each: w ∝ 1/L


def test_gradnorm_downweights_the_task_with_the_larger_gradient() -> None:
    b = balance.get("gradnorm", alpha=1.5)
    b.setup(["t0", "t1"])
    layer = nn.Parameter(torch.tensor([[1.0, 1.0]]))
    opt = torch.optim.SGD([layer, *b.parameters()], lr=0.01)
    for _ in range(20):
        opt.zero_grad()
        out = layer.sum()
        losses = {"t0": 10 * out, "t1": out}
        balance.backward(losses, [layer], b)
        opt.step()
        b.after_step(lambda: {})
    w = b.method.task_weights.detach()
    assert w.sum().item() == pytest.approx(2.0)
    assert w[0] < w[1]


def test_famo_logit_step_is_torch_adam() -> None:
    b = balance.get("famo", lr=0.05, weight_decay=0.01)
    b.setup(["t0", "t1", "t2"])
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=0.05, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        before = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
        after = before * (0.5 + torch.rand(3, generator=gen, dtype=torch.float64))
        losses = {f"t{i}": before[i].clone().requires_grad_() for i in range(3)}
        balance.backward(losses, [], b)
        z = torch.softmax(logits.detach(), 0)
        delta = before.log() - after.log()
        logits.grad = z * (delta - z @ delta)
        adam.step()
        b.after_step(lambda after=after: {f"t{i}": after[i] for i in range(3)})
        # FAMO adds 1e-8
        assert torch.allclose(b.method.logits, logits.detach(), rtol=1e-6, atol=1e-9)
