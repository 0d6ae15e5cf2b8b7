"""The SharingArchitecture contract, checked on every architecture in the registry."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sharing_testlib import TASKS, build, features, fit, synthetic_regression

from polytask.models.sharing import ARCHITECTURES, SharingArchitecture

# Architectures over vector features (mtan reads SegNet stages: tests/models/test_segnet_mtan.py)
NAMES = [n for n in ARCHITECTURES.names() if not ARCHITECTURES.get(n).reads_stages]
REGRESSION = synthetic_regression()

# Defaults everywhere (the shape test uses nothing else), except: hard_sharing's default
# has no parameters at all, and task_moe routes sparsely, so an expert may see no example
# of a small batch; dense routing lets the test see every expert's users.
OPTIONS: dict[str, dict[str, Any]] = {"hard_sharing": {"layers": 2}}
DENSE_OPTIONS: dict[str, dict[str, Any]] = {**OPTIONS, "task_moe": {"top_k": 8}}


def private_ids(arch: SharingArchitecture, tasks: tuple[str, ...] | list[str]) -> set[int]:
    return {id(p) for t in tasks for p in arch.task_parameters(t)}


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_for_every_task_and_last_dim_only(name: str) -> None:
    arch = build(name).eval()
    x = features(5, 3)
    with torch.no_grad():
        tokens = arch(x, TASKS)
        rows = arch(x[:, 1], TASKS)
    assert set(tokens) == set(rows) == set(TASKS)
    for t in TASKS:
        assert tokens[t].shape == (5, 3, arch.output_dim)
        assert rows[t].shape == (5, arch.output_dim)
        assert torch.isfinite(tokens[t]).all()
        # B x L x D acts position by position on the last dim, like B x D.
        torch.testing.assert_close(tokens[t][:, 1], rows[t])


@pytest.mark.parametrize("name", NAMES)
def test_subset_of_tasks_computes_only_those(name: str) -> None:
    arch = build(name, **OPTIONS.get(name, {}))
    others = private_ids(arch, TASKS[1:])
    called: list[torch.nn.Module] = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: called.append(module)
    )
    try:
        out = arch(features(4), ["a"])
    finally:
        hook.remove()
    assert set(out) == {"a"}
    for module in called:  # no module holding only other tasks' parameters ran
        own = [id(p) for p in module.parameters(recurse=False)]
        assert not own or not set(own) <= others, type(module).__name__
    aux = arch.auxiliary_loss()
    (out["a"].sum() + (aux if aux is not None else 0)).backward()
    assert all(p.grad is None for p in arch.parameters() if id(p) in others)


@pytest.mark.parametrize("name", NAMES)
def test_task_gradient_never_reaches_other_tasks_private_parameters(name: str) -> None:
    arch = build(name, **OPTIONS.get(name, {}))
    out = arch(features(6, 2), TASKS)
    out["a"].sum().backward()
    for p in arch.parameters():
        if id(p) in private_ids(arch, TASKS[1:]):
            assert p.grad is None or not p.grad.any()
    shared = list(arch.shared_parameters())
    assert not shared or any(p.grad is not None and p.grad.any() for p in shared)


@pytest.mark.parametrize("name", NAMES)
def test_shared_and_task_parameters_partition_parameters(name: str) -> None:
    arch = build(name, **OPTIONS.get(name, {}))
    groups = [list(arch.shared_parameters())] + [list(arch.task_parameters(t)) for t in TASKS]
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)), "a parameter is declared twice"
    assert set(ids) == {id(p) for p in arch.parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_shared_parameters_are_used_by_several_tasks(name: str) -> None:
    """The converse of the isolation test: nothing declared shared is really one task's."""
    arch = build(name, **DENSE_OPTIONS.get(name, {}))
    shared = list(arch.shared_parameters())
    out = arch(features(6), TASKS)
    users = [0] * len(shared)
    for t in TASKS:
        grads = torch.autograd.grad(out[t].sum(), shared, retain_graph=True, allow_unused=True)
        users = [n + (g is not None) for n, g in zip(users, grads, strict=True)]
    assert all(n >= 2 for n in users)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_identical_outputs(name: str) -> None:
    arch = build(name, seed=0, **OPTIONS.get(name, {}))
    arch(features(4), TASKS)  # a training step's forward must not disturb what is saved
    fresh = build(name, seed=1, **OPTIONS.get(name, {}))
    fresh.load_state_dict(arch.state_dict())
    arch.eval()
    fresh.eval()
    x = features(4, 3)
    with torch.no_grad():
        before, after = arch(x, TASKS), fresh(x, TASKS)
    for t in TASKS:
        assert torch.equal(before[t], after[t])


@pytest.mark.parametrize("name", NAMES)
def test_auxiliary_loss_is_none_or_a_finite_scalar(name: str) -> None:
    arch = build(name, **OPTIONS.get(name, {}))
    arch(features(4), TASKS)
    aux = arch.auxiliary_loss()
    assert aux is None or (aux.dim() == 0 and torch.isfinite(aux))


@pytest.mark.parametrize("name", NAMES)
def test_learns_a_synthetic_three_task_regression(name: str) -> None:
    ratios = fit(build(name, **OPTIONS.get(name, {})), REGRESSION)
    # held-out MSE relative to the constant predictor's, for every task
    assert max(ratios.values()) < 0.25, ratios
