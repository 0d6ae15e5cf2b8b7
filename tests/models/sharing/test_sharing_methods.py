"""Method-specific behaviour: DSelect-k sparsity, the LTB tree, TAPS layer choices,
task-MoE routing and load balancing, cross-stitch initialisation, option errors."""

from __future__ import annotations

import pytest
import torch
from sharing_testlib import INPUT_DIM, TASKS, build, features, fit, synthetic_regression

from polytask.errors import ConfigError
from polytask.models.sharing.cross_stitch import CrossStitch
from polytask.models.sharing.dselect_k import DSelectK
from polytask.models.sharing.ltb import LearningToBranch
from polytask.models.sharing.taps import TAPS
from polytask.models.sharing.task_moe import TaskMoE


def test_dselect_k_gates_become_exactly_k_sparse_with_the_entropy_regulariser() -> None:
    arch = build("dselect_k", num_experts=8, k=2)
    assert isinstance(arch, DSelectK)
    x = features(4)
    before = {t: arch.expert_weights(t, x) for t in TASKS}
    assert all(int((w > 0).sum()) == 8 for w in before.values())  # dense at the start
    fit(arch, synthetic_regression())
    with torch.no_grad():
        for t in TASKS:
            weights, selectors = arch.gates[t](x)
            # every selector has saturated to one expert: at most k non-zero weights
            assert ((selectors == 0) | (selectors == 1)).all()
            assert (selectors.sum(-1) == 1).all()
            assert 1 <= int((weights > 0).sum()) <= 2
            torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_dselect_k_handles_a_number_of_experts_that_is_not_a_power_of_two() -> None:
    arch = build("dselect_k", num_experts=5, k=2, per_example=True)
    out = arch(features(4, 3), TASKS)
    assert all(o.shape == (4, 3, arch.output_dim) for o in out.values())
    aux = arch.auxiliary_loss()
    assert aux is not None and torch.isfinite(aux)
    weights = arch.expert_weights("a", features(4))
    assert weights.shape == (4, 5) and (weights.sum(-1) <= 1 + 1e-6).all()


def ltb_with_tree() -> LearningToBranch:
    """A 3-level LTB whose logits send a and b down one branch and c down another."""
    arch = build("ltb")
    assert isinstance(arch, LearningToBranch)
    parents = {1: [0, 1, 2], 2: [0, 0, 1]}  # level -> parent of each node
    with torch.no_grad():
        for level, chosen in parents.items():
            for node, parent in enumerate(chosen):
                arch.parent_logits[level - 1][node][parent] = 5.0
    return arch


def test_ltb_discretized_tree_is_valid_and_survives_save_and_load() -> None:
    arch = build("ltb")
    assert isinstance(arch, LearningToBranch)
    fit(arch, synthetic_regression(), steps=50)
    arch.discretize()
    paths = arch.paths()
    assert set(paths) == set(TASKS)
    for path in paths.values():  # one node per level, each the fixed parent of the next
        assert len(path) == len(arch.sizes)
        for level in range(1, len(path)):
            assert int(arch.topology[level - 1, path[level]]) == path[level - 1]
    parents = arch.topology[:, : arch.sizes[1]]
    assert ((parents >= 0) & (parents < arch.sizes[0])).all()  # exactly one parent each

    fresh = build("ltb", seed=1)
    assert isinstance(fresh, LearningToBranch)
    fresh.load_state_dict(arch.state_dict())
    assert bool(fresh.discretized) and fresh.paths() == paths
    x = features(4, 3)
    for mode in (True, False):  # the tree is followed in training mode too (no sampling)
        arch.train(mode)
        fresh.train(mode)
        first, second = arch(x, TASKS), fresh(x, TASKS)
        assert all(torch.equal(first[t], second[t]) for t in TASKS)


def test_ltb_ownership_follows_the_discretized_tree() -> None:
    arch = ltb_with_tree()
    arch.discretize()
    paths = arch.paths()
    assert paths == {"a": [0, 0, 0], "b": [0, 0, 1], "c": [1, 1, 2]}
    own_c = {id(p) for p in arch.task_parameters("c")}
    assert {id(p) for p in arch.nodes[0][1].parameters()} <= own_c  # c's branch is c's
    assert not {id(p) for p in arch.nodes[0][0].parameters()} & own_c
    shared = {id(p) for p in arch.shared_parameters()}
    assert {id(p) for p in arch.nodes[1][0].parameters()} <= shared  # a and b share it
    out = arch(features(4), TASKS)
    out["a"].sum().backward()
    assert all(p.grad is None for p in arch.task_parameters("c"))


def test_ltb_samples_parents_while_training_and_is_deterministic_in_eval() -> None:
    arch = build("ltb")
    x = features(4)
    assert not torch.equal(arch(x, ["a"])["a"], arch(x, ["a"])["a"])  # Gumbel noise
    arch.eval()
    assert torch.equal(arch(x, ["a"])["a"], arch(x, ["a"])["a"])


def test_taps_reports_specialised_layers_and_prunes_them_under_the_penalty() -> None:
    arch = build("taps", layers=3, sparsity_weight=1.0)
    assert isinstance(arch, TAPS)
    assert arch.specialised_layers() == {t: [0, 1, 2] for t in TASKS}
    fit(arch, synthetic_regression(), steps=150)
    layers = arch.specialised_layers()
    assert set(layers) == set(TASKS)
    assert sum(map(len, layers.values())) < 9  # the penalty shared some layers back
    for t, chosen in layers.items():
        scores = arch.scores[t].tolist()
        assert chosen == [i for i, s in enumerate(scores) if s >= arch.threshold]


def test_taps_task_without_specialised_layers_runs_the_shared_network() -> None:
    arch = build("taps")
    assert isinstance(arch, TAPS)
    with torch.no_grad():
        for deltas in arch.deltas:
            for delta in deltas.values():
                delta.normal_()
        arch.scores["a"].fill_(0.05)  # below the threshold: every layer shared
        arch.scores["b"].fill_(0.05)
    assert arch.specialised_layers()["a"] == []
    out = arch(features(4), TASKS)
    assert torch.equal(out["a"], out["b"]) and not torch.equal(out["a"], out["c"])
    # straight-through: a switched-off layer's score still gets the task's gradient
    out["a"].sum().backward()
    score_grad = arch.scores["a"].grad
    assert score_grad is not None and score_grad.any()


def test_task_moe_auxiliary_loss_is_finite_and_positive() -> None:
    arch = build("task_moe")
    arch(features(8, 4), TASKS)
    aux = arch.auxiliary_loss()
    assert aux is not None and aux.dim() == 0 and torch.isfinite(aux) and aux > 0
    aux.backward()
    assert arch.router.weight.grad is not None


def test_task_level_routing_sends_all_of_a_task_to_the_same_experts() -> None:
    arch = build("task_moe", route_on_input=False, top_k=1)
    assert isinstance(arch, TaskMoE)
    probs = arch.route(features(16), "a")
    assert (probs == probs[0]).all()


def test_cross_stitch_units_start_with_the_papers_weights() -> None:
    arch = build("cross_stitch", layers=3)
    assert isinstance(arch, CrossStitch)
    assert len(arch.units) == 2
    for unit in arch.units:
        for i, t in enumerate(TASKS):
            expected = torch.full((3,), 0.05)
            expected[i] = 0.9
            torch.testing.assert_close(unit[t].detach(), expected)


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [("mmoe", "num_experts", 0), ("dselect_k", "k", 9), ("task_moe", "top_k", 0),
     ("ltb", "depth", 1), ("ple", "levels", 0), ("cross_stitch", "self_weight", 2.0)],
)  # fmt: skip
def test_bad_options_name_the_field_and_value(name: str, option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"architecture_options\.{option} = {value!r}"):
        build(name, **{option: value})


def test_defaults_need_no_options() -> None:
    for name in ("mmoe", "cgc", "ple", "dselect_k", "adatt", "task_moe", "ltb", "taps"):
        arch = build(name)
        assert arch.output_dim == INPUT_DIM


def test_ltb_in_the_trainer_anneals_then_fixes_its_tree(tmp_path) -> None:
    """Through the trainer: the temperature falls during the search, the tree is fixed
    after `search_fraction` of the steps, the saved model is the fixed tree, and resuming
    is unaffected (the schedule depends only on the step)."""
    import numpy as np
    import pandas as pd

    from polytask import Trainer, load_config
    from polytask.inference import load_run

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    frame = pd.DataFrame(x, columns=list("abcd"))
    frame["y1"], frame["y2"] = x[:, 0] + x[:, 1], x[:, 2] - x[:, 3]
    config = load_config({
        "data": frame,
        "tasks": [{"name": "t1", "kind": "regression", "input": list("abcd"), "label": "y1"},
                  {"name": "t2", "kind": "regression", "input": list("abcd"), "label": "y2"}],
        "model": {"backbone": {"type": "mlp", "hidden": [16]},
                  "architecture": {"name": "ltb", "search_fraction": 0.5,
                                   "final_temperature": 0.2}},
        "train": {"max_steps": 40, "eval_every": 20, "progress": False, "batch_size": 16},
    })
    trainer = Trainer(config, tmp_path / "run")
    trainer.fit()
    ltb = trainer.model.architecture
    assert bool(ltb.discretized)
    assert ltb.temperature < 1.0
    loaded = load_run(tmp_path / "run").model.architecture
    assert bool(loaded.discretized)
    assert loaded.paths() == ltb.paths()
