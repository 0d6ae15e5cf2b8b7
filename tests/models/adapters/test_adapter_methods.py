"""What each core adapter method does beyond the shared properties."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from adapters_testlib import TASKS, adapted, adapter_of, batches, bert_encoder

from polytask.models.adapters import ADAPTERS

CORE = ["lora", "task_lora", "mtlora", "mtl_lora", "multilora", "molora"]


@pytest.mark.parametrize("name", CORE)
def test_training_starts_from_the_pretrained_model(name: str) -> None:
    torch.manual_seed(0)
    backbone = bert_encoder()
    inputs = batches()["a"]
    before = backbone(inputs)
    adapter = ADAPTERS.get(name)(TASKS, r=4)
    adapter.attach(backbone)
    adapter.route(torch.zeros(3, dtype=torch.long), mask=inputs["attention_mask"])
    torch.testing.assert_close(backbone(inputs), before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("options", [{}, {"diagonal": True}, {"num_up": 1, "temperature": 0.5}])
def test_mtl_lora_counts_its_options(options: dict[str, Any]) -> None:
    adapter = adapter_of(adapted("mtl_lora", **options))
    formula = type(adapter).trainable_count(adapter.attached_to, 3, r=4, **options)
    assert adapter.trainable_parameter_count() == formula


def _task_layers(name_options: dict[str, Any]) -> set[str]:
    adapter = adapter_of(adapted("mtlora", **name_options))
    return {name for name, wrapper in adapter.wrapped.items()
            if list(wrapper.task_parameters(0))}


def test_mtlora_puts_task_specific_modules_in_the_last_blocks() -> None:
    assert _task_layers({}) == {"encoder.encoder.layer.1.attention.self.query",
                                "encoder.encoder.layer.1.attention.self.value"}
    assert len(_task_layers({"task_layers": 2})) == 4
    adapter = adapter_of(adapted("mtlora", shared_mode="matrix", trainable_scale_shared=True,
                                 trainable_scale_per_task=True))
    last = adapter.wrapped["encoder.encoder.layer.1.attention.self.query"]
    assert not last.has_shared  # `matrix`: the branching layer keeps only the task paths
    assert adapter.trainable_parameter_count() == type(adapter).trainable_count(
        adapter.attached_to, 3, r=4, shared_mode="matrix", trainable_scale_shared=True,
        trainable_scale_per_task=True)


def test_molora_routes_without_task_ids_at_inference_and_learns_its_router() -> None:
    model = adapted("molora")
    inputs = batches()
    trained = model(inputs)
    assert trained.auxiliary_loss is not None and trained.auxiliary_loss > 0
    model.eval()
    evaluated = model(inputs)
    assert evaluated.auxiliary_loss is None
    adapter_of(model).route(None, mask=inputs["b"]["attention_mask"])
    features = model.backbone(inputs["b"])  # no task id at all
    torch.testing.assert_close(model.heads["b"](features), evaluated["b"], atol=1e-6, rtol=0)


def test_molora_learned_routing_shares_every_expert() -> None:
    adapter = adapter_of(adapted("molora", routing="learned"))
    assert not any(list(adapter.task_parameters(t)) for t in TASKS)
    assert list(adapter_of(adapted("molora")).task_parameters("a"))
