"""Method-specific behaviour of the routed adapters: poly / mhr (skill routing, relaxed
Bernoulli, routing-only few-shot adaptation), mpt (source prompt -> target tasks) and palora
(preference conditioning, `--preference` and `--pareto` on the command line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from adapters_testlib import TASKS, WIDTH, adapted, adapter_of, batches, text_config, tokens
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from polytask import Trainer, load, load_config
from polytask.cli import app
from polytask.errors import CheckpointError, ConfigError
from polytask.inference import evaluate_run
from polytask.models.adapters import ADAPTERS
from polytask.models.adapters.base import apply_preference
from polytask.models.adapters.palora import PaLoRA
from polytask.models.adapters.poly import PolyLinear
from polytask.models.model import MultiTaskModel
from polytask.pareto import simplex_points
from polytask.pipeline import prepare

runner = CliRunner()


def _first_layer(model: MultiTaskModel) -> Any:
    return next(iter(adapter_of(model).wrapped.values()))


def _save_source(model: MultiTaskModel, run: Path, tasks: tuple[str, ...] = TASKS) -> Path:
    """`model`'s weights as a finished run directory (model.safetensors + meta.json)."""
    (run / "model").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(run / "model" / "model.safetensors"))
    (run / "model" / "meta.json").write_text(json.dumps({"tasks": [{"name": t} for t in tasks]}))
    return run


# -- poly / mhr ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "heads"), [("poly", 1), ("mhr", 4)])
def test_routing_weights_per_sample_heads_and_skills(name: str, heads: int) -> None:
    layer = _first_layer(adapted(name, skills=3))
    assert isinstance(layer, PolyLinear)
    task_ids = torch.tensor([0, 2, 1, 2])
    layer.eval()
    weights = layer.routing_weights(task_ids)
    assert weights.shape == (4, heads, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, heads))
    logits = layer.router.module_logits[task_ids].view(4, heads, 3)
    torch.testing.assert_close(weights, torch.sigmoid(logits) / torch.sigmoid(logits).sum(-1,
                                                                                   keepdim=True))
    torch.testing.assert_close(weights[1], weights[3])  # same task, same routing at inference


@pytest.mark.parametrize("name", ["poly", "mhr"])
def test_relaxed_bernoulli_routing_is_sampled_in_training_only(name: str) -> None:
    model = adapted(name)
    inputs = batches()
    model.train()
    first, second = model(inputs)["a"], model(inputs)["a"]
    assert not torch.equal(first, second)  # a fresh relaxed-Bernoulli sample per forward
    layer = _first_layer(model)
    sampled = layer.routing_weights(torch.tensor([0, 0]))
    torch.testing.assert_close(sampled.sum(-1), torch.ones_like(sampled.sum(-1)))
    assert not torch.equal(sampled[0], sampled[1])  # per sample, even within a task
    model.eval()
    torch.testing.assert_close(model(inputs)["a"], model(inputs)["a"], rtol=0, atol=0)


def test_mhr_heads_must_divide_the_layer_widths() -> None:
    with pytest.raises(ConfigError, match=r"model\.adapter\.heads: 3 does not divide"):
        adapted("mhr", heads=3)


def test_poly_task_parameters_are_the_task_routing_rows() -> None:
    model = adapted("poly")
    adapter = adapter_of(model)
    layers = len(adapter.wrapped)
    private = list(adapter.task_parameters("b"))
    assert len(private) == layers
    assert all(p is layer.router.task_logits[1]
               for p, layer in zip(private, adapter.wrapped.values(), strict=True))
    shared = {id(p) for p in adapter.shared_parameters()}
    assert all(id(layer.lora_A) in shared and id(layer.lora_B) in shared
               for layer in adapter.wrapped.values())


def test_mhr_few_shot_adaptation_trains_only_the_new_tasks_routing(tmp_path: Path) -> None:
    source = adapted("mhr", seed=1)
    run = _save_source(source, tmp_path / "source")
    target = adapted("mhr", seed=2, source=str(run), routing_only=True)
    adapter = adapter_of(target)
    for (name, mine), theirs in zip(adapter.wrapped.items(),
                                    adapter_of(source).wrapped.values(), strict=True):
        assert torch.equal(mine.lora_A, theirs.lora_A), name
        assert torch.equal(mine.lora_B, theirs.lora_B), name
    trainable = {id(p) for p in target.parameters() if p.requires_grad}
    expected = {id(p) for p in adapter.routing_parameters()} | {
        id(p) for p in target.heads.parameters()}
    assert trainable == expected
    layers = adapter.attached_to
    assert adapter.trainable_parameter_count() == ADAPTERS.get("mhr").trainable_count(
        layers, len(TASKS), r=4, routing_only=True) == len(layers) * len(TASKS) * 4 * 4

    inventory = [p.detach().clone() for layer in adapter.wrapped.values()
                 for p in (layer.lora_A, layer.lora_B)]
    routing = [p.detach().clone() for p in adapter.routing_parameters()]
    optimizer = torch.optim.SGD([p for p in target.parameters() if p.requires_grad], lr=1.0)
    out = target.train()(batches())
    sum(o.sum() for o in out.outputs.values()).backward()
    optimizer.step()
    after = [p for layer in adapter.wrapped.values() for p in (layer.lora_A, layer.lora_B)]
    assert all(torch.equal(a, b) for a, b in zip(inventory, after, strict=True))
    assert any(not torch.equal(a, b)
               for a, b in zip(routing, adapter.routing_parameters(), strict=True))


def test_routing_only_needs_a_source_and_a_matching_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set model\.adapter\.source"):
        ADAPTERS.get("mhr")(TASKS, routing_only=True)
    run = _save_source(adapted("mhr", skills=2), tmp_path / "source")
    with pytest.raises(CheckpointError, match="has shape"):
        adapted("mhr", skills=3, source=str(run), routing_only=True)
    with pytest.raises(CheckpointError, match="neither a finished run"):
        adapted("mhr", source=str(tmp_path / "missing"), routing_only=True)


# -- mpt ----------------------------------------------------------------------------------


def test_mpt_prompts_are_per_task_and_leave_the_positions_unchanged() -> None:
    model = adapted("mpt", num_virtual_tokens=3).eval()
    adapter = adapter_of(model)
    calls: list[torch.Size] = []
    embeddings = model.backbone.encoder.get_input_embeddings()
    model.backbone.encoder.encoder.register_forward_pre_hook(
        lambda module, args: calls.append(args[0].shape))
    batch = tokens(2, 6, seed=4)
    adapter.route(torch.tensor([0, 1]))
    hidden = model.backbone(batch, "token")
    assert hidden.shape == (2, 6, WIDTH)  # the 3 prompt positions are dropped again
    assert calls == [torch.Size([2, 9, WIDTH])]  # ... after the encoder saw them
    adapter.route(torch.tensor([1, 1]))
    assert not torch.allclose(model.backbone(batch, "token")[0], hidden[0])
    assert embeddings.weight.requires_grad is False


def test_mpt_needs_a_transformer_backbone() -> None:
    adapter = ADAPTERS.get("mpt")(TASKS)
    with pytest.raises(ConfigError, match="input embeddings of a transformers model"):
        adapter.attach(nn.Sequential(nn.Linear(4, 4)))


@pytest.fixture(scope="module")
def mpt_source(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path,
               text_files: dict[str, Path]) -> Path:
    """A finished mpt run on the three text tasks (the source tasks)."""
    run = tmp_path_factory.mktemp("mpt") / "source"
    adapter = {"name": "mpt", "num_virtual_tokens": 4}
    Trainer(load_config(text_config(tiny_bert, text_files, adapter, max_steps=2)), run).fit()
    return run


def _target_adapter(tiny_bert: Path, text_files: dict[str, Path], source: Path,
                    source_init: str) -> Any:
    settings = text_config(tiny_bert, text_files, {"name": "mpt", "num_virtual_tokens": 4,
                                                   "source": str(source),
                                                   "source_init": source_init})
    settings["tasks"] = settings["tasks"][:1]  # the target task
    settings["tasks"][0]["name"] = "target"
    _, model, _, _ = prepare(load_config(settings))
    return adapter_of(model)


@pytest.mark.parametrize("source_init", ["average", "topic", "shared"])
def test_mpt_target_tasks_start_from_the_source_prompt(
        mpt_source: Path, tiny_bert: Path, text_files: dict[str, Path],
        source_init: str) -> None:
    from safetensors.torch import load_file

    source = load_file(str(mpt_source / "model" / "model.safetensors"))
    cols = torch.stack([source[f"adapter.prompt.task_cols.{i}"] for i in range(3)])
    rows = torch.stack([source[f"adapter.prompt.task_rows.{i}"] for i in range(3)])
    adapter = _target_adapter(tiny_bert, text_files, mpt_source, source_init)
    assert torch.equal(adapter.prompt.embedding.weight, source["adapter.prompt.embedding.weight"])
    if source_init == "shared":
        assert not torch.equal(adapter.prompt.task_cols[0], cols.mean(0))
        return
    picked = slice(None) if source_init == "average" else slice(1, 2)  # topic: source task 1
    torch.testing.assert_close(adapter.prompt.task_cols[0], cols[picked].mean(0))
    torch.testing.assert_close(adapter.prompt.task_rows[0], rows[picked].mean(0))
    assert all(p.requires_grad for p in adapter.adapter_parameters())


def test_mpt_source_init_must_name_a_source_task(mpt_source: Path, tiny_bert: Path,
                                                 text_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="'weather' is not average, shared or a task"):
        _target_adapter(tiny_bert, text_files, mpt_source, "weather")


def test_a_target_run_reloads_without_its_source_run(mpt_source: Path, tiny_bert: Path,
                                                     text_files: dict[str, Path],
                                                     tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(mpt_source, source)
    settings = text_config(tiny_bert, text_files, {"name": "mpt", "num_virtual_tokens": 4,
                                                   "source": str(source)}, max_steps=1)
    settings["tasks"] = settings["tasks"][:1]
    Trainer(load_config(settings), tmp_path / "target").fit()
    shutil.rmtree(source)
    assert "sentiment" in evaluate_run(tmp_path / "target")
    loaded = load(tmp_path / "target").predict({"sentence": ["a good movie"]})
    assert list(loaded.columns) == ["sentiment"]
    assert ADAPTERS.get("mhr").reload_options({"r": 2, "source": "x", "routing_only": True}) \
        == {"r": 2}


# -- palora -------------------------------------------------------------------------------


def _palora(**options: Any) -> tuple[MultiTaskModel, PaLoRA]:
    model = adapted("palora", **options).eval()
    adapter = adapter_of(model)
    assert isinstance(adapter, PaLoRA)
    return model, adapter


def test_the_preference_conditions_the_outputs() -> None:
    model, adapter = _palora()
    inputs = batches()
    adapter.set_preference([1, 0, 0])
    first = model(inputs)["b"]
    adapter.set_preference([0, 0, 3])  # normalised to (0, 0, 1)
    last = model(inputs)["b"]
    assert not torch.allclose(first, last)
    torch.testing.assert_close(adapter.preference, torch.tensor([0.0, 0.0, 1.0]))


def test_per_sample_preferences_equal_one_preference_at_a_time() -> None:
    model, adapter = _palora()
    batch = tokens(3, 6, seed=5)
    preferences = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5]])
    adapter.route(torch.zeros(3, dtype=torch.long), preferences)
    together = model.backbone(batch)
    for row, preference in enumerate(preferences):
        adapter.set_preference(preference)
        adapter.route(torch.zeros(3, dtype=torch.long))
        torch.testing.assert_close(model.backbone(batch)[row], together[row])


def test_training_preferences_follow_a_per_step_dirichlet_schedule() -> None:
    model, adapter = _palora()
    model.train()
    adapter.before_step(7, 10)
    drawn = adapter.step_preference
    assert drawn is not None and drawn.min() >= 0
    torch.testing.assert_close(drawn.sum(), torch.tensor(1.0))
    assert torch.equal(adapter.preference_of_step(7), drawn)  # resumable
    assert not torch.equal(adapter.preference_of_step(8), drawn)
    adapter.route(torch.tensor([0, 2]))
    assert adapter.routing.preference is not None
    assert torch.equal(adapter.routing.preference, drawn.expand(2, -1))
    losses = {"a": torch.tensor(1.0), "c": torch.tensor(2.0)}
    weighed = adapter.weigh_losses(losses)
    torch.testing.assert_close(weighed["a"], 3 * drawn[0])
    torch.testing.assert_close(weighed["c"], 2 * 3 * drawn[2])
    model.eval()
    assert adapter.weigh_losses(losses) is losses


def test_merged_delta_is_the_layer_at_the_inference_preference() -> None:
    _, adapter = _palora()
    adapter.set_preference([0.1, 0.6, 0.3])
    name, layer = next(iter(adapter.wrapped.items()))
    x = torch.randn(2, 5, layer.in_features)
    adapter.route(torch.zeros(2, dtype=torch.long))
    merged = adapter.merged_delta("a")[f"{name}.weight"] + layer.base_layer.weight
    torch.testing.assert_close(layer(x), nn.functional.linear(x, merged, layer.base_layer.bias))


@pytest.mark.parametrize(("values", "message"), [
    ([0.5, 0.5], "has 2 value.* 3 tasks"),
    ([0.5, -0.1, 0.6], "negative or non-finite"),
    ([0, 0, 0], "all zero"),
])
def test_a_bad_preference_is_a_config_error(values: list[float], message: str) -> None:
    _, adapter = _palora()
    with pytest.raises(ConfigError, match=f"--preference: .*{message}"):
        apply_preference(adapter, values)


def test_only_a_preference_conditioned_adapter_takes_a_preference() -> None:
    with pytest.raises(ConfigError, match="this run's adapter is 'poly'"):
        apply_preference(adapter_of(adapted("poly")), [1, 0, 0])
    with pytest.raises(ConfigError, match="this run has no adapter"):
        apply_preference(None, [1, 0, 0])


def test_simplex_points_cover_the_simplex() -> None:
    assert simplex_points(3, 2) == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    points = simplex_points(6, 3)
    assert len(points) == 6 and len({tuple(p) for p in points}) == 6
    assert all(min(p) >= 0 and abs(sum(p) - 1) < 1e-9 for p in points)


@pytest.fixture(scope="module")
def palora_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path,
               text_files: dict[str, Path]) -> Path:
    run = tmp_path_factory.mktemp("palora") / "run"
    config = text_config(tiny_bert, text_files, {"name": "palora", "r": 2}, max_steps=3,
                         lr=0.05)
    Trainer(load_config(config), run).fit()
    return run


def _eval(run: Path, *options: str) -> Any:
    return runner.invoke(app, ["eval", str(run), *options])


def test_eval_with_a_preference(palora_run: Path) -> None:
    result = _eval(palora_run, "--preference", "1,0,0")
    assert result.exit_code == 0, result.output
    assert "sentiment" in result.stdout and "entity_f1" in result.stdout


@pytest.mark.parametrize(("preference", "message"), [
    ("0.5,0.5", "has 2 value"), ("1,-1,1", "negative"), ("a,b,c", "not a comma-separated"),
])
def test_eval_and_predict_refuse_a_bad_preference(palora_run: Path, tmp_path: Path,
                                                  preference: str, message: str) -> None:
    result = _eval(palora_run, "--preference", preference)
    assert result.exit_code == 2 and message in result.stderr
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"sentence": ["a good movie"]}).to_csv(rows, index=False)
    result = runner.invoke(app, ["predict", str(palora_run), "--input", str(rows), "--task",
                                 "sentiment", "--preference", preference])
    assert result.exit_code == 2 and message in result.stderr


def test_predict_depends_on_the_preference(palora_run: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"sentence": ["a good movie", "so boring"]}).to_csv(rows, index=False)

    def probabilities(preference: str) -> list[dict[str, Any]]:
        result = runner.invoke(app, ["predict", str(palora_run), "--input", str(rows),
                                     "--task", "sentiment", "--proba", "--preference",
                                     preference])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    sentiment_first, ner_first = probabilities("1,0,0"), probabilities("0,0,1")
    assert [line["row"] for line in sentiment_first] == [0, 1]
    assert sentiment_first != ner_first


def test_pareto_traces_the_front_and_the_report_plots_it(palora_run: Path) -> None:
    result = _eval(palora_run, "--pareto", "3")
    assert result.exit_code == 0, result.output
    front = json.loads((palora_run / "pareto.json").read_text())
    assert list(front["tasks"]) == ["sentiment", "topic", "ner"]
    # three tasks, three points: the single-task preferences (the simplex's corners)
    assert sorted(list(p["preference"].values()) for p in front["points"]) == [
        [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    first = front["points"][0]["metrics"]
    assert all(front["tasks"][t]["metric"] in first[t] for t in front["tasks"])
    assert "pareto.json" in result.stdout
    report = runner.invoke(app, ["report", str(palora_run)])
    assert report.exit_code == 0, report.output
    assert (palora_run / "pareto_front.png").is_file()
    assert 'id="pareto_front"' in (palora_run / "report.html").read_text()


def test_pareto_needs_two_points_and_a_palora_run(palora_run: Path, tmp_path: Path) -> None:
    result = _eval(palora_run, "--pareto", "1")
    assert result.exit_code == 2 and "at least 2" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    config = yaml.safe_load((palora_run / "config.yaml").read_text())
    config["model"]["adapter"]["name"] = "lora"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    result = _eval(other, "--pareto", "3")
    assert result.exit_code == 2 and "preference-conditioned adapter" in result.stderr


@pytest.mark.parametrize(("name", "balancer", "sampler"), [
    ("poly", "pcgrad", "all"), ("mhr", "ew", "temperature"), ("mpt", "mgda", "all"),
    ("palora", "mgda", "all"), ("palora", "ew", "temperature")])
def test_routed_adapters_compose_with_balancers_and_samplers(
        tmp_path: Path, tiny_bert: Path, text_files: dict[str, Path], name: str,
        balancer: str, sampler: str) -> None:
    settings = text_config(tiny_bert, text_files, {"name": name, "r": 2}, max_steps=2,
                           checkpoint_every=100)
    trainer = Trainer(load_config({**settings, "balancer": balancer, "sampler": sampler}),
                      tmp_path / "run")
    results = trainer.fit()
    assert results["steps"] == 2
    assert all(isinstance(entry["value"], float) for entry in results["tasks"].values())
    assert all(p.grad is None or torch.isfinite(p.grad).all()
               for p in adapter_of(trainer.model).adapter_parameters())
