"""Properties every registered adapter must have (parametrised over the whole registry)."""

from __future__ import annotations

import copy

import pytest
import torch
from adapters_testlib import (
    OPTIONS,
    TASKS,
    adapted,
    adapter_of,
    batches,
    private_parameters,
)

from polytask.errors import ConfigError
from polytask.models.adapters import ADAPTERS

EVERY_ADAPTER = ADAPTERS.names()


def _has_private_parts(name: str) -> bool:
    return any(private_parameters(adapted(name), t) for t in TASKS)


def _merges(name: str) -> bool:
    try:
        adapter_of(adapted(name)).merged_delta(TASKS[0])
    except ConfigError:
        return False
    return True


def _routes_at_random_in_training(name: str) -> bool:
    model, inputs = adapted(name).train(), batches()
    return not torch.equal(model(inputs)["a"], model(inputs)["a"])


#: Which properties apply to which adapter, found by probing each one (so a new adapter needs
#: no edit here): task-private parts, a mergeable path, random routing draws in training.
PRIVATE = [n for n in EVERY_ADAPTER if _has_private_parts(n)]
MERGEABLE = [n for n in EVERY_ADAPTER if _merges(n)]
DETERMINISTIC_IN_TRAINING = [n for n in EVERY_ADAPTER if not _routes_at_random_in_training(n)]


@pytest.mark.parametrize("name", EVERY_ADAPTER)
def test_only_the_adapter_and_the_heads_train(name: str) -> None:
    model = adapted(name)
    adapter = adapter_of(model)
    expected = {id(p) for p in adapter.adapter_parameters() if p.requires_grad}
    expected |= {id(p) for p in model.heads.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    for wrapper in adapter.wrapped.values():
        assert not any(p.requires_grad for p in wrapper.base_layer.parameters())
    shared = {id(p) for p in model.shared_parameters()}
    private = {id(p) for t in TASKS for p in model.task_parameters(t)}
    assert not shared & private and shared | private == expected


@pytest.mark.parametrize("name", EVERY_ADAPTER)
def test_trainable_count_matches_the_docstring_formula(name: str) -> None:
    adapter = adapter_of(adapted(name))
    formula = type(adapter).trainable_count(adapter.attached_to, len(TASKS), **OPTIONS)
    assert adapter.trainable_parameter_count() == formula > 0


@pytest.mark.parametrize(("name", "training"), [(n, False) for n in EVERY_ADAPTER]
                         + [(n, True) for n in DETERMINISTIC_IN_TRAINING])
def test_a_mixed_task_batch_equals_single_task_batches(name: str, training: bool) -> None:
    model = adapted(name).train(training)
    inputs = batches()
    mixed = model(inputs)
    for task, batch in inputs.items():
        alone = model({task: batch})[task]
        torch.testing.assert_close(mixed[task], alone, atol=1e-6, rtol=0)


def test_a_mixed_batch_runs_the_backbone_once() -> None:
    model = adapted("task_lora")
    calls: list[int] = []
    model.backbone.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    model(batches())
    assert calls == [9]  # 3 + 4 + 2 rows, one pass


def test_the_probes_find_each_kind_of_adapter() -> None:
    """The lists the properties are parametrised over are not empty by mistake."""
    assert PRIVATE and MERGEABLE and DETERMINISTIC_IN_TRAINING
    assert set(EVERY_ADAPTER) - set(PRIVATE) and set(EVERY_ADAPTER) - set(MERGEABLE)


@pytest.mark.parametrize("name", sorted(set(EVERY_ADAPTER) - set(PRIVATE)))
def test_an_adapter_without_private_parts_shares_every_parameter(name: str) -> None:
    model = adapted(name)
    shared = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in adapter_of(model).adapter_parameters() if p.requires_grad} <= shared


@pytest.mark.parametrize("name", PRIVATE)
def test_a_task_private_part_gets_no_gradient_from_another_task(name: str) -> None:
    model = adapted(name).train()
    out = model(batches())
    for task in TASKS:
        private = private_parameters(model, task)
        own = torch.autograd.grad(out[task].sum(), private, retain_graph=True,
                                  allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in own), task
        for other in (t for t in TASKS if t != task):
            grads = torch.autograd.grad(out[other].sum(), private, retain_graph=True,
                                        allow_unused=True)
            assert all(g is None or not g.any() for g in grads), (task, other)


@pytest.mark.parametrize("name", EVERY_ADAPTER)
def test_routing_is_cleared_after_the_forward(name: str) -> None:
    model = adapted(name)
    model(batches())
    assert adapter_of(model).routing.task_ids is None


@pytest.mark.parametrize("name", sorted(set(EVERY_ADAPTER) - set(MERGEABLE)))
def test_an_adapter_that_cannot_merge_says_so_by_name(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        adapter_of(adapted(name)).merged_delta("b")


@pytest.mark.parametrize("name", MERGEABLE)
def test_the_merged_delta_gives_the_adapted_outputs(name: str) -> None:
    model = adapted(name).eval()
    adapter = adapter_of(model)
    inputs = batches()["b"]
    deltas = adapter.merged_delta("b")
    expected = model({"b": inputs})["b"]
    plain = copy.deepcopy(model)
    plain_adapter = adapter_of(plain)
    plain_adapter.detach(plain.backbone)
    plain.adapter = None
    with torch.no_grad():
        for key, delta in deltas.items():
            plain.backbone.get_parameter(key).add_(delta)
    torch.testing.assert_close(plain({"b": inputs})["b"], expected, atol=1e-5, rtol=0)


def test_the_public_names_list_every_adapter() -> None:
    from polytask.adapters import names

    assert names() == ADAPTERS.names()
    assert {"lora", "task_lora", "mtlora", "mtl_lora", "multilora", "molora"} <= set(names())
