"""Adapters under torchrun (2 gloo processes on CPU): every rank takes the same step, equal
to one process on the combined batch, and only the adapter and heads change."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from adapters_testlib import text_config
from safetensors.torch import load_file

from tests.train.test_distributed import WORKER, _run, assert_ranks_match_one_process


@pytest.mark.parametrize("balancer", ["ew", "pcgrad"])
def test_two_processes_match_one_process_with_a_task_routed_adapter(
        tmp_path: Path, tiny_bert: Path, text_files: dict[str, Path], balancer: str) -> None:
    base = text_config(tiny_bert, text_files, {"name": "task_lora", "r": 2},
                       optimizer="sgd", lr=0.05, checkpoint_every=100)
    base["only"] = ["sentiment", "topic"]  # every row labelled: rank means = combined mean
    base["balancer"] = balancer
    combined = json.loads(json.dumps(base))
    combined["train"]["batch_size"] = 2 * base["train"]["batch_size"]
    (tmp_path / "ddp.json").write_text(json.dumps(base))
    (tmp_path / "one.json").write_text(json.dumps(combined))

    _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
          "--nproc-per-node", "2", str(WORKER), str(tmp_path / "ddp.json"),
          str(tmp_path / "ddp")])
    _run([sys.executable, str(WORKER), str(tmp_path / "one.json"), str(tmp_path / "one")])

    rank0 = assert_ranks_match_one_process(tmp_path / "ddp", tmp_path / "one")
    initial = load_file(str(tiny_bert / "model.safetensors"))
    frozen_seen = 0
    for name, tensor in rank0.items():
        frozen = name.removeprefix("backbone.encoder.").replace(".base_layer", "")
        if frozen in initial:  # a backbone weight: frozen, never communicated or stepped
            assert torch.equal(tensor, initial[frozen]), f"frozen {name} changed"
            frozen_seen += 1
    assert frozen_seen >= len(initial) - 1  # (BERT's unused pooler aside)
