"""Adapters on a tiny random LLaMA-style causal LM: attaching and per-sample routing."""

from __future__ import annotations

import pytest
import torch
from adapters_testlib import VOCAB, WIDTH, adapted, batches

from polytask.models.adapters import ADAPTERS
from polytask.models.backbones import HFEncoder

LINEAR_ADAPTERS = ["lora", "task_lora", "mtlora", "mtl_lora", "multilora", "molora"]


def _llama_config() -> object:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=32,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=32)


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_mixed_batches_route_per_sample_on_a_causal_lm(name: str) -> None:
    from transformers import LlamaModel

    torch.manual_seed(0)
    backbone = HFEncoder(LlamaModel(_llama_config()))
    model = adapted(name, backbone=backbone, target_modules=["q_proj", "v_proj"]).eval()
    inputs = {task: {k: v for k, v in batch.items() if k != "token_type_ids"}
              for task, batch in batches().items()}
    mixed = model(inputs)
    for task, batch in inputs.items():
        torch.testing.assert_close(mixed[task], model({task: batch})[task], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", LINEAR_ADAPTERS)
def test_an_adapter_attaches_to_a_causal_lm_head_model(name: str) -> None:
    """Any HF module works: here LlamaForCausalLM itself, routed by hand."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(_llama_config())
    adapter = ADAPTERS.get(name)(["x", "y"], r=2, target_modules=["q_proj", "v_proj", "down_proj"])
    adapter.attach(lm)
    assert len(adapter.wrapped) == 6 and not lm.lm_head.weight.requires_grad
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all("base_layer" not in n for n in trainable)
    ids = torch.randint(0, VOCAB, (2, 5))
    adapter.route(torch.tensor([0, 1]))
    logits = lm(input_ids=ids).logits
    logits.sum().backward()
    assert logits.shape == (2, 5, VOCAB)
    assert any(p.grad is not None for p in adapter.adapter_parameters())
