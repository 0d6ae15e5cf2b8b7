"""The Trainer's cheap paths (benchmarks/trainer_overhead.py) change no result: the plain
cross-entropy of training batches is chosen only where it equals the masked one, a run is
the same to the bit either way, and the progress bar is moved no more often than it
redraws."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from polytask.config import load_config
from polytask.models.inputs import collate
from polytask.tasks.data import SplitData
from polytask.tasks.kinds import Classification
from polytask.tasks.kinds.base import masked_cross_entropy
from polytask.tasks.spec import Task
from polytask.train.callbacks import ProgressDisplay
from polytask.train.trainer import Trainer


def _fitted(labels: list[Any], **options: Any) -> Classification:
    kind = Classification(Task(name="t", kind="classification", input=["x"], label="y",
                               **options))
    kind.fit(pd.DataFrame({"x": range(len(labels)), "y": labels}))
    return kind


def test_plain_loss_only_without_blank_labels_or_class_weights() -> None:
    assert _fitted(["a", "b", "a"]).plain_loss
    assert not _fitted(["a", None, "b"]).plain_loss  # a blank label in the training split
    assert not _fitted(["a", "b", "a"], class_weight="balanced").plain_loss
    assert not _fitted(["a", "b", "a"], class_weight={"a": 2.0}).plain_loss
    restored = Classification(Task(name="t", kind="classification", input=["x"], label="y"))
    restored.load_state(_fitted(["a", "b"]).state())  # a saved model's kind: not fitted
    assert not restored.plain_loss


@pytest.mark.parametrize("seed", range(6))
def test_plain_loss_equals_the_masked_loss_to_the_bit(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows, classes = [1, 7, 256, 1000, 33, 4096][seed], 2 + seed * 5
    kind = _fitted(["a", "b"])
    kind.label_names = [str(c) for c in range(classes)]
    outputs = (torch.randn(rows, classes, generator=generator) * 4).requires_grad_()
    labels = torch.randint(classes, (rows,), generator=generator)
    plain = kind.training_loss(outputs, labels)
    (plain_grad,) = torch.autograd.grad(plain * 0.37, outputs)
    masked = masked_cross_entropy(outputs, labels)
    (masked_grad,) = torch.autograd.grad(masked * 0.37, outputs)
    assert torch.equal(plain, masked) and torch.equal(plain_grad, masked_grad)


def test_the_loss_of_other_batches_keeps_its_contract() -> None:
    """`loss` (evaluation, other splits) is still 0 with a graph on an unlabelled batch."""
    kind = _fitted(["a", "b"])
    outputs = torch.randn(3, 2, requires_grad=True)
    loss = kind.loss(outputs, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(outputs.grad, torch.zeros(3, 2))


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["y0"] = np.where(x[:, 0] > 0, "p", "n")
    frame["y1"] = np.where(x[:, 1] + x[:, 2] > 0, "p", "n")
    return frame


def _weights_after_training(run_dir: Path, plain_loss: bool) -> dict[str, torch.Tensor]:
    columns = ["a", "b", "c", "d"]
    config = load_config({
        "data": _frame(),
        "tasks": [{"name": f"t{i}", "kind": "classification", "input": columns,
                   "label": f"y{i}"} for i in range(2)],
        "model": {"backbone": {"type": "mlp", "hidden": [8]}},
        "train": {"max_steps": 12, "batch_size": 16, "eval_every": 12, "log_every": 5,
                  "progress": False, "callbacks": []},
    })
    trainer = Trainer(config, run_dir)
    trainer.fit()
    assert all(trainer.data.kinds[t].plain_loss == plain_loss for t in trainer.task_names)
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_a_run_is_the_same_to_the_bit_with_the_masked_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _weights_after_training(tmp_path / "plain", plain_loss=True)
    fit = Classification.fit

    def masked_fit(self: Classification, train: pd.DataFrame) -> None:
        fit(self, train)
        self.plain_loss = False

    monkeypatch.setattr(Classification, "fit", masked_fit)
    masked = _weights_after_training(tmp_path / "masked", plain_loss=False)
    assert plain.keys() == masked.keys()
    assert all(torch.equal(plain[k], masked[k]) for k in plain)


def test_split_tensors_are_made_contiguous_once_and_gathered_alike() -> None:
    columns = torch.arange(30).reshape(3, 10).T  # a transposed (non-contiguous) encoding
    split = SplitData(inputs={"categorical": columns}, labels={"t": torch.arange(20)[::2]})
    assert split.inputs["categorical"].is_contiguous()
    assert split.labels["t"].is_contiguous()
    rows = torch.tensor([7, 0, 3, 3])
    assert torch.equal(collate(split.inputs, rows)["categorical"], columns[rows])


def test_the_bar_is_moved_no_more_often_than_it_redraws(
        monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=80)
    with ProgressDisplay(total=500, start=0, enabled=True, console=terminal, every=10) as bar:
        moves: list[int] = []
        update = bar.progress.update
        monkeypatch.setattr(bar.progress, "update",
                            lambda task, **kw: (moves.append(kw["completed"]),
                                                update(task, **kw)))
        for step in range(1, 500):  # far quicker than REDRAW: held back, but the losses
            bar.update(step, {"loss/t": 0.5} if step == 250 else {})
        assert 250 in moves and len(moves) <= 3
        bar.update(500, {})  # the last step always shows
        assert moves[-1] == 500
    assert bar.progress.tasks[0].completed == 500
