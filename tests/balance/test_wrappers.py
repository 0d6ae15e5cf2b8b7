"""Engine options: representation-level gradients, update_every, sparse training, per-task
SAM (each on its own; `test_engine.py` composes them)."""

from __future__ import annotations

import math

import pytest
import torch

import polytask.balance as balance
import polytask.balance.gramian as gramian
from polytask.balance.jacobian import task_jacobian

from .helpers import AsAggregator, TinyMultiTask, batch, flat_grads, is_gradient_method

NAMES = ["t0", "t1", "t2"]
FEATURE_METHODS = [
    n for n in balance.names()
    if is_gradient_method(n) and balance.BALANCERS.get(n).supports_features
]


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_representation_level_runs_for_every_capable_method(name: str) -> None:
    model = TinyMultiTask()
    losses, features = model.losses(*batch())
    b = balance.get(name, representation=True)
    b.setup(NAMES)
    balance.backward(losses, model.shared(), b, features, task_params=model.task_params())
    assert torch.isfinite(flat_grads(model.shared())).all()
    assert flat_grads(model.shared()).abs().sum() > 0


def test_mgda_ub_is_the_weighted_sum_with_feature_gramian_weights() -> None:
    model = TinyMultiTask()
    x, y = batch()
    losses, features = model.losses(x, y)
    b = balance.get("mgda", representation=True)
    weights = balance.backward(losses, model.shared(), b, features,
                               task_params=model.task_params()).weights
    got = flat_grads(model.shared())
    model.zero_grad()
    losses, features = model.losses(x, y)
    vector = torch.stack([losses[n] for n in NAMES])
    jf = task_jacobian(vector, [features])
    w = balance.MGDA().gramian_weights(jf @ jf.T)
    assert [weights[n] for n in NAMES] == pytest.approx(w.tolist())
    expected = torch.autograd.grad((w * vector).sum(), model.shared())
    assert torch.allclose(got, torch.cat([g.flatten() for g in expected]), rtol=1e-5, atol=1e-7)


def test_representation_errors() -> None:
    with pytest.raises(ValueError, match="loss weighting"):
        balance.get("ew", representation=True)
    with pytest.raises(ValueError, match="representation"):
        balance.get("m_config", representation=True)
    model = TinyMultiTask()
    x = torch.randn(4, 5)
    losses = {"a": model.trunk(x).sum(), "b": model.trunk[0](x).sum()}  # no common output
    with pytest.raises(ValueError, match="features="):
        balance.backward(losses, model.shared(), balance.get("mgda", representation=True))


def test_update_every_reuses_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    b = balance.get("nash_mtl", update_every=3)
    b.setup(NAMES)
    calls = []
    inner = b.method
    original = inner.gramian_weights
    monkeypatch.setattr(inner, "gramian_weights", lambda g: calls.append(1) or original(g))
    model = TinyMultiTask()
    seen = []
    for step in range(4):
        model.zero_grad()
        losses, features = model.losses(*batch(seed=step))
        seen.append(balance.backward(losses, model.shared(), b, features,
                                     task_params=model.task_params()).weights)
        losses, _ = model.losses(*batch(seed=step))
        vector = torch.stack([losses[n] for n in NAMES])
        w = torch.tensor([seen[-1][n] for n in NAMES])
        expected = torch.autograd.grad((w * vector).sum(), model.shared())
        expected_flat = torch.cat([g.flatten() for g in expected])
        assert torch.allclose(flat_grads(model.shared()), expected_flat, rtol=1e-5, atol=1e-7)
    assert len(calls) == 2
    assert seen[0] == seen[1] == seen[2] != seen[3]
    with pytest.raises(ValueError, match="weighted sum"):
        balance.get("graddrop", update_every=2)


def test_sparse_updates_only_the_chosen_entries() -> None:
    model = TinyMultiTask()
    b = balance.get("pcgrad", sparse=0.25)
    b.setup(NAMES)
    masks = []
    for step in range(2):
        model.zero_grad()
        losses, features = model.losses(*batch(seed=step))
        balance.backward(losses, model.shared(), b, features, task_params=model.task_params())
        grads = flat_grads(model.shared())
        masks.append(grads != 0)
        assert int(masks[-1].sum()) <= -(-grads.numel() // 4)
    assert torch.equal(masks[0] | masks[1], b.state.mask)
    restored = balance.get("pcgrad", sparse=0.25)
    restored.load_state_dict(b.state_dict())
    assert torch.equal(restored.state.mask, b.state.mask)


@pytest.mark.parametrize("name", ["pcgrad", "graddrop"])
@pytest.mark.parametrize("block", [7, None])
def test_sparse_matches_the_restricted_jacobian(
    monkeypatch: pytest.MonkeyPatch, name: str, block: int | None
) -> None:
    """The entries gathered block by block from the factors are those of the full Jacobian:
    the mask is the top |column sum| and the update is the method's on the kept columns."""
    if block is not None:
        monkeypatch.setattr(gramian, "BLOCK", block)
    def make(**options: object) -> balance.Balancer:
        if name == "graddrop":  # the same draws in both
            options["generator"] = torch.Generator().manual_seed(2)
        return balance.get(name, **options)

    model = TinyMultiTask(width=16).double()
    twin = AsAggregator(make().method)
    b = make(sparse=0.3)
    b.setup(NAMES)
    mask = None
    for step in range(2):
        model.zero_grad()
        x, y = batch(seed=step)
        losses, features = model.losses(x.double(), y.double())
        balance.backward(losses, model.shared(), b, features, task_params=model.task_params())
        jacobian = task_jacobian([losses[n] for n in NAMES], model.shared())
        if mask is None:
            keep = math.ceil(0.3 * jacobian.shape[1])
            mask = torch.zeros(jacobian.shape[1], dtype=torch.bool)
            mask[jacobian.sum(0).abs().topk(keep).indices] = True
            assert torch.equal(mask, b.state.mask)
        expected = torch.zeros(jacobian.shape[1], dtype=torch.float64)
        expected[mask] = twin.aggregate(jacobian[:, mask])
        assert torch.allclose(flat_grads(model.shared()), expected, rtol=1e-9, atol=1e-12)


def test_sam_uses_flat_gradients_and_restores_the_weights() -> None:
    model = TinyMultiTask()
    x, y = batch()
    before = [p.detach().clone() for p in model.shared()]
    b = balance.get("upgrad", sam_rho=0.05)
    losses, features = model.losses(x, y)
    with pytest.raises(ValueError, match="set_closure"):
        balance.backward(losses, model.shared(), b, features, task_params=model.task_params())
    model.zero_grad()
    b.set_closure(lambda: model.losses(x, y)[0])
    balance.backward(losses, model.shared(), b, features, task_params=model.task_params())
    sam = flat_grads(model.shared())
    assert all(torch.equal(p, q) for p, q in zip(model.shared(), before, strict=True))
    model.zero_grad()
    losses, features = model.losses(x, y)
    balance.backward(losses, model.shared(), balance.get("upgrad"), features,
                     task_params=model.task_params())
    plain = flat_grads(model.shared())
    assert torch.isfinite(sam).all() and not torch.allclose(sam, plain)
    # as rho -> 0 the flat gradients tend to the plain ones
    model.zero_grad()
    tiny = balance.get("upgrad", sam_rho=1e-6)
    tiny.set_closure(lambda: model.losses(x, y)[0])
    losses, features = model.losses(x, y)
    balance.backward(losses, model.shared(), tiny, features, task_params=model.task_params())
    assert torch.allclose(flat_grads(model.shared()), plain, rtol=1e-3, atol=1e-5)
