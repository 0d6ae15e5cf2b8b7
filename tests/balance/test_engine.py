"""The engine: each option with each method family, their compositions, the shared cut found
in the graph, FAMO's lagged variant and the exported classes."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

import polytask.balance as balance

from .helpers import TinyMultiTask, batch, flat_grads

NAMES = ["t0", "t1", "t2"]
#: one method per family: loss weighting, Gramian weighting, Jacobian aggregator
FAMILIES = {"loss": "famo", "gramian": "pcgrad", "jacobian": "graddrop"}
OPTIONS: dict[str, dict[str, Any]] = {
    "representation": {"representation": True},
    "update_every": {"update_every": 2},
    "sparse": {"sparse": 0.5},
    "sam_rho": {"sam_rho": 0.05},
    "representation+update_every": {"representation": True, "update_every": 2},
    "sparse+update_every": {"sparse": 0.5, "update_every": 2},
    "sparse+sam_rho": {"sparse": 0.5, "sam_rho": 0.05},
}
#: (family, option) -> the words of the error refusing it; the rest must run
REFUSED = {
    **{("loss", option): "loss weighting" for option in OPTIONS},
    ("jacobian", "update_every"): "weighted sum",
    ("jacobian", "representation+update_every"): "weighted sum",
    ("jacobian", "sparse+update_every"): "weighted sum",
}


def run_steps(balancer: balance.Balancer, steps: int = 3) -> list[balance.BalanceResult]:
    model = TinyMultiTask()
    results = []
    for step in range(steps):
        x, y = batch(seed=step)
        model.zero_grad()
        balancer.set_closure(lambda x=x, y=y: model.losses(x, y)[0])
        losses, _ = model.losses(x, y)
        results.append(balance.backward(losses, model.shared(), balancer, gramian=True))
        grads = flat_grads(model.shared())
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0
        balancer.after_step(lambda x=x, y=y: model.losses(x, y)[0])
    return results


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_composes_with_each_family_or_is_refused(family: str, option: str) -> None:
    name = FAMILIES[family]
    refused = REFUSED.get((family, option))
    if refused is not None:
        with pytest.raises(ValueError, match=refused):
            balance.get(name, **OPTIONS[option])
        return
    balancer = balance.get(name, generator=torch.Generator().manual_seed(0),
                           **OPTIONS[option])
    balancer.setup(NAMES)
    results = run_steps(balancer)
    assert all(r.gramian is not None and r.gramian.shape == (3, 3) for r in results)


@pytest.mark.parametrize(("options", "words"), [
    ({"representation": True, "sparse": 0.5}, "representation and sparse do not compose"),
    ({"representation": True, "sam_rho": 0.1}, "representation and sam_rho do not compose"),
    ({"update_every": 2, "sam_rho": 0.1}, "update_every and sam_rho do not compose"),
    ({"update_every": 0}, "update_every must be >= 1"),
    ({"sparse": 1.5}, r"sparse must be a fraction in \(0, 1\]"),
])
def test_meaningless_combinations_are_refused_clearly(options: dict[str, Any],
                                                      words: str) -> None:
    with pytest.raises(ValueError, match=words):
        balance.get("mgda", **options)


def test_stateful_options_need_a_state_with_a_pure_method() -> None:
    model = TinyMultiTask()
    losses, _ = model.losses(*batch())
    with pytest.raises(ValueError, match="EngineState"):
        balance.backward(losses, model.shared(), balance.MGDA(),
                         options=balance.Options(update_every=2))
    state = balance.EngineState()
    balance.backward(losses, model.shared(), balance.MGDA(),
                     options=balance.Options(update_every=2), state=state)
    assert state.step == 1 and state.cached is not None


def test_sparse_with_update_every_reuses_weights_on_the_same_entries() -> None:
    balancer = balance.get("mgda", sparse=0.5, update_every=2)
    balancer.setup(NAMES)
    results = run_steps(balancer)
    assert results[0].weights == results[1].weights != results[2].weights


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "upgrad", "graddrop", "m_config"])
def test_the_readme_call_finds_the_shared_cut_and_the_heads(name: str) -> None:
    """`backward(losses, shared)` with nothing else gives the same gradients, bit for bit,
    as the call that names the features and the task-specific parameters."""
    grads = []
    for hinted in (False, True):
        model = TinyMultiTask()
        method = balance.get(name, **({"generator": torch.Generator().manual_seed(0)}
                                      if name in ("pcgrad", "graddrop") else {}))
        method.setup(NAMES)
        losses, features = model.losses(*batch())
        if hinted:
            balance.backward(losses, model.shared(), method, features,
                             task_params=model.task_params())
        else:
            balance.backward(losses, model.shared(), method)
        grads.append(torch.cat([flat_grads(model.shared()), flat_grads(model.task_params())]))
    assert torch.equal(grads[0], grads[1])


def test_the_shared_graph_is_the_trunk_output() -> None:
    model = TinyMultiTask()
    losses, features = model.losses(*batch())
    graph = balance.engine.find_shared_graph([losses[n] for n in NAMES], model.shared())
    assert graph.representation is not None and graph.cut is not None
    assert graph.representation.node is features.grad_fn  # where the heads branch off
    assert type(graph.cut.node).__name__ == "AddmmBackward0"  # the trunk's last layer
    assert {id(p) for p in graph.task_params} == {id(p) for p in model.task_params()}


def test_famo_lagged_needs_no_extra_forward_and_resumes_exactly() -> None:
    model = TinyMultiTask()
    lagged = balance.get("famo", lagged=True)
    lagged.setup(NAMES)

    def no_forward() -> dict[str, torch.Tensor]:
        raise AssertionError("the lagged variant must not re-evaluate the batch")

    seen = []
    for step in range(3):
        losses, _ = model.losses(*batch(seed=step))
        seen.append(balance.backward(losses, model.shared(), lagged).weights)
        lagged.after_step(no_forward)
    assert seen[0] != seen[1]  # the second step learnt from the first two steps' losses
    buffer = io.BytesIO()
    torch.save(lagged.state_dict(), buffer)
    buffer.seek(0)
    restored = balance.get("famo", lagged=True)
    restored.setup(NAMES)
    restored.load_state_dict(torch.load(buffer))
    first = balance.backward(model.losses(*batch(seed=3))[0], model.shared(), restored)
    second = balance.backward(model.losses(*batch(seed=3))[0], model.shared(), lagged)
    assert first.weights == second.weights


def test_every_method_class_is_exported() -> None:
    from polytask.balance import MGDA, UW, PCGrad

    assert isinstance(balance.get("pcgrad").method, PCGrad)
    assert isinstance(balance.get("mgda").method, MGDA)
    assert isinstance(balance.get("uw").method, UW)
    exported = {getattr(balance, n) for n in balance.__all__}
    assert all(balance.BALANCERS.get(n) in exported for n in balance.names())
