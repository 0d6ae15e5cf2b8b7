"""ZipIt on tiny random models: permutation invariance (MLP and BERT feed-forward blocks),
partial zipping, the matching when only banned matches are left (bounded memory), and bad
input."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from polytask import merge
from polytask.errors import ConfigError
from polytask.merge import MergeData, MergeTask, StateDict
from polytask.merge.zipit import is_per_task, task_state, zip_matrices
from polytask.models.backbones import HFEncoder, MLPBackbone
from polytask.tasks.kinds import Classification
from polytask.tasks.spec import Task

HIDDEN = [8, 8, 8]


def _mlp(state: StateDict) -> nn.Module:
    module = MLPBackbone(4, [], HIDDEN)
    module.load_state_dict(state)
    return module.eval()


def _mlp_state(seed: int) -> StateDict:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in MLPBackbone(4, [], HIDDEN).state_dict().items()}


def _permuted_mlp(state: StateDict, seed: int) -> StateDict:
    """The same function with every hidden layer's units shuffled (the output layer too)."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    previous = None
    for index in range(len(HIDDEN)):
        key = f"mlp.{2 * index}"
        perm = torch.randperm(HIDDEN[index], generator=generator)
        weight = state[f"{key}.weight"] if previous is None else state[f"{key}.weight"][:, previous]
        out[f"{key}.weight"], out[f"{key}.bias"] = weight[perm], state[f"{key}.bias"][perm]
        previous = perm
    return out


def _task(name: str, inputs: Callable[[int], dict[str, Tensor]], width: int) -> MergeTask:
    kind = Classification(Task(name=name, kind="classification", input="x", label="y"))
    kind.load_state({"labels": ["a", "b"]})

    def batches() -> Iterator[tuple[dict[str, Tensor], Tensor | None]]:
        for seed in range(4):
            yield inputs(seed + 100 * len(name)), None

    return MergeTask(name=name, head=nn.Linear(width, 2), kind=kind, batches=batches)


def _numeric(seed: int) -> dict[str, Tensor]:
    return {"numeric": torch.randn(32, 4, generator=torch.Generator().manual_seed(seed))}


def _mlp_data() -> MergeData:
    return MergeData(backbone=_mlp, tasks={n: _task(n, _numeric, HIDDEN[-1]) for n in "ab"})


def test_matching_recovers_a_permutation_of_identical_features() -> None:
    features = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    both = torch.cat([features, features[:, perm]], dim=1)
    merge_matrix, unmerge = zip_matrices(torch.corrcoef(both.T), num_models=2)
    first, second = unmerge[:6], unmerge[6:]
    assert torch.equal(first.sum(dim=0), torch.ones(6))  # one feature of each model per group
    torch.testing.assert_close(second, first[perm])
    torch.testing.assert_close(merge_matrix.sum(dim=1), torch.ones(6))


def test_zipping_a_permuted_copy_recovers_the_original_function() -> None:
    original = _mlp_state(0)
    experts = {"a": original, "b": _permuted_mlp(original, 1)}
    merger = merge.get("zipit")
    merged = merger.merge(_mlp_state(7), experts, _mlp_data())
    inputs = _numeric(999)
    with torch.no_grad():
        for name, state in experts.items():
            torch.testing.assert_close(_mlp(task_state(merged, name))(inputs),
                                       _mlp(state)(inputs))
    # the hidden layers are shared; the layer producing the heads' features is per task
    assert "mlp.0.weight" in merged and "mlp.2.weight" in merged
    assert "mlp.4.weight" not in merged and "zipit.b.mlp.4.weight" in merged
    assert any("mlp.0 -> mlp.2" in line for line in merger.report())


def test_partial_zipping_keeps_the_later_layers_per_task() -> None:
    experts = {"a": _mlp_state(1), "b": _mlp_state(2)}  # different initialisations
    merged = merge.get("zipit", layers=1).merge(_mlp_state(0), experts, _mlp_data())
    assert is_per_task(merged)
    assert {"mlp.0.weight", "mlp.0.bias"} <= set(merged)
    assert not {"mlp.2.weight", "mlp.4.weight"} & set(merged)
    for name, state in experts.items():
        own = task_state(merged, name)
        assert set(own) == set(state)
        for key in ("mlp.2.bias", "mlp.4.weight", "mlp.4.bias"):  # kept as trained
            torch.testing.assert_close(own[key], state[key])
        assert own["mlp.2.weight"].shape == state["mlp.2.weight"].shape  # columns unzipped


def test_partial_zipping_of_a_permuted_copy_is_exact_per_task() -> None:
    original = _mlp_state(0)
    experts = {"a": original, "b": _permuted_mlp(original, 3)}
    merged = merge.get("zipit", layers=1).merge(_mlp_state(7), experts, _mlp_data())
    inputs = _numeric(5)
    with torch.no_grad():
        for name, state in experts.items():
            torch.testing.assert_close(_mlp(task_state(merged, name))(inputs),
                                       _mlp(state)(inputs))


def _bert(state: StateDict | None = None, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=24, max_position_embeddings=16)
    module = HFEncoder(BertModel(config, add_pooling_layer=False))
    if state is not None:
        module.load_state_dict(state)
    return module.eval()


def _tokens(seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(6, 10, dtype=torch.long)
    mask[:3, 7:] = 0
    return {"input_ids": torch.randint(1, 40, (6, 10), generator=generator),
            "attention_mask": mask}


def test_zipping_bert_feed_forward_blocks_of_a_permuted_copy_is_exact() -> None:
    original = {k: v.detach().clone() for k, v in _bert().state_dict().items()}
    permuted = dict(original)
    generator = torch.Generator().manual_seed(4)
    for layer in range(2):
        prefix = f"encoder.encoder.layer.{layer}"
        perm = torch.randperm(24, generator=generator)
        for key in ("intermediate.dense.weight", "intermediate.dense.bias"):
            permuted[f"{prefix}.{key}"] = original[f"{prefix}.{key}"][perm]
        key = f"{prefix}.output.dense.weight"
        permuted[key] = original[key][:, perm]
    data = MergeData(backbone=_bert, tasks={n: _task(n, _tokens, 16) for n in "ab"})
    merger = merge.get("zipit")
    merged = merger.merge(original, {"a": original, "b": permuted}, data)
    assert not is_per_task(merged) and set(merged) == set(original)
    inputs = _tokens(77)
    with torch.no_grad():
        torch.testing.assert_close(_bert(merged)(inputs), _bert(original)(inputs))
    report = "\n".join(merger.report())
    assert "layer.0.intermediate.dense -> encoder.encoder.layer.0.output.dense" in report
    assert "averaged" in report


def test_bad_input_is_a_clear_error() -> None:
    experts = {"a": _mlp_state(1), "b": _mlp_state(2)}
    with pytest.raises(ConfigError, match="needs data"):
        merge.get("zipit").merge(_mlp_state(0), experts, None)
    with pytest.raises(ConfigError, match="layers=5 but the backbone has 2 feature space"):
        merge.get("zipit", layers=5).merge(_mlp_state(0), experts, _mlp_data())
    with pytest.raises(ConfigError, match="layers=0"):
        merge.get("zipit", layers=0)


def _stuck_correlation(blocks: int) -> Tensor:
    """Correlations of 3 models x 2·blocks features where, with no within-model match allowed
    (beta = 0), the greedy first joins an A-B, an A-C and a B-C pair in each block: then every
    two groups share a model, and `blocks` more matches are needed."""
    width = 2 * blocks
    correlation = torch.full((3 * width, 3 * width), 0.1)
    correlation.fill_diagonal_(1.0)
    for block in range(blocks):
        a, b, c = 2 * block, width + 2 * block, 2 * width + 2 * block
        for x, y, value in ((a, b, 0.9), (a + 1, c, 0.8), (b + 1, c + 1, 0.7)):
            correlation[x, y] = correlation[y, x] = value
    return correlation


def test_matching_completes_in_bounded_memory_when_only_banned_matches_are_left() -> None:
    blocks = 20
    tracemalloc.start()
    try:
        merge_matrix, unmerge = zip_matrices(_stuck_correlation(blocks), num_models=3, beta=0.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # the groups hold each feature once (they once doubled per match)
    width = 2 * blocks
    assert unmerge.shape == (3 * width, width)
    assert torch.equal(unmerge.sum(dim=1), torch.ones(3 * width))  # one group per feature
    torch.testing.assert_close(merge_matrix.sum(dim=1), torch.ones(width))
    group = unmerge.argmax(dim=1)
    for block in range(blocks):
        a, b, c = 2 * block, width + 2 * block, 2 * width + 2 * block
        assert group[a] == group[b] and group[a + 1] == group[c]
        assert group[b + 1] == group[c + 1]
