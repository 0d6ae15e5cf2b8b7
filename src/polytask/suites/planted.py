"""`planted`: synthetic binary tasks with a known grouping, to check task-affinity methods.

Tasks are drawn from a few latent models, one per group. Every task of a group labels the
rows with the same latent function plus its own noise; different groups use unrelated
functions of the same inputs, which the suite's deliberately narrow backbone cannot all hold
at once, so training every task together makes the groups compete for the shared layer
(negative transfer), while training each group apart does not. The suite records the planted
partition (`Suite.true_groups`), so `polytask affinity` can score a recovered grouping with
the adjusted Rand index.

How a table is generated, from `seed` alone (deterministic, no files):
- inputs: ``features`` independent standard normal columns ``x0, x1, ...``;
- group g's latent model: ``f_g(x) = v_g · tanh(U_g x)``, a random one-hidden-layer teacher
  with `LATENT_UNITS` units (``U_g`` entries N(0, 4/features), ``v_g`` entries N(0, 1)),
  standardised to mean 0 and variance 1;
- task t (in group ``t mod groups``): ``z_t = f_g(x) + noise · (a_t·x + ε_t) / √2`` with a
  random unit direction ``a_t`` of its own and independent ε_t ~ N(0, 1) per row, and the
  label is 1 where ``z_t`` is above its median (so classes are balanced).

At the default noise (0.3) the tasks of a group agree on 85-90% of the rows and tasks of
different groups on about 50% (chance). With the recommended settings (300 steps, batch 64,
lr 3e-3) training each planted group apart scores about as well as single-task training,
while training all nine tasks together loses 3-4% (Δm%).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from polytask.errors import ConfigError
from polytask.models.spec import BackboneSpec
from polytask.suites._base import SUITES, Splits, Suite, check_splits
from polytask.tasks.spec import Task

#: Hidden units of each group's latent teacher; the backbone has as many (see `BACKBONE`).
LATENT_UNITS = 8
#: One hidden layer as wide as one latent model: enough for a group, too narrow for all.
BACKBONE = BackboneSpec(type="mlp", hidden=[LATENT_UNITS])
BINARY_LABELS = ["0", "1"]


def task_names(tasks: int) -> list[str]:
    """The task names, ``task0, task1, ...``: they say nothing of the groups."""
    return [f"task{i}" for i in range(tasks)]


def planted_groups(tasks: int, groups: int) -> list[list[str]]:
    """The planted partition: task i belongs to group ``i mod groups``."""
    names = task_names(tasks)
    return [names[g::groups] for g in range(groups)]


def _standardised(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / values.std()


def _latent(rng: np.random.Generator, inputs: np.ndarray) -> np.ndarray:
    """One group's latent function of the inputs (a random tanh teacher), standardised."""
    features = inputs.shape[1]
    weights = rng.standard_normal((LATENT_UNITS, features)) * (2.0 / np.sqrt(features))
    readout = rng.standard_normal(LATENT_UNITS)
    return _standardised(np.tanh(inputs @ weights.T) @ readout)


def planted_table(*, tasks: int, groups: int, noise: float, rows: int, features: int,
                  seed: int) -> pd.DataFrame:
    """The whole generated table: ``x0..`` float inputs and one "0"/"1" label column per
    task (see the module docstring for the model)."""
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((rows, features))
    latents = [_latent(rng, inputs) for _ in range(groups)]
    columns: dict[str, np.ndarray] = {f"x{j}": inputs[:, j] for j in range(features)}
    for index, name in enumerate(task_names(tasks)):
        direction = rng.standard_normal(features)
        direction /= np.linalg.norm(direction)
        own = (inputs @ direction + rng.standard_normal(rows)) / np.sqrt(2.0)
        score = latents[index % groups] + noise * own
        columns[name] = np.where(score > np.median(score), "1", "0").astype(object)
    return pd.DataFrame(columns)


def _check_options(tasks: int, groups: int, noise: float, train_size: int, eval_size: int,
                   features: int) -> None:
    if groups < 1 or tasks < groups:
        raise ConfigError(f"suite.groups / suite.tasks: the planted suite needs 1 <= groups <= "
                          f"tasks (got groups={groups}, tasks={tasks}); lower groups or raise "
                          "tasks")
    if noise < 0:
        raise ConfigError(f"suite.noise: must be >= 0 (got {noise}); 0 gives every task of a "
                          "group the same labels, 0.3 is the default")
    for name, value in (("train_size", train_size), ("eval_size", eval_size),
                        ("features", features)):
        if value < 1:
            raise ConfigError(f"suite.{name}: must be a positive number (got {value})")


@SUITES.register(
    "planted",
    paper="synthetic (polytask): tasks from a few latent teachers with a planted grouping, "
    "for checking task-affinity methods such as Fifty et al. 2021, Efficiently Identifying "
    "Task Groupings for Multi-Task Learning",
)
def load_planted(*, tasks: int = 9, groups: int = 3, noise: float = 0.3,
                 train_size: int = 2000, eval_size: int = 1000, features: int = 16,
                 seed: int = 0) -> Suite:
    """Synthetic binary tasks in `groups` planted groups (see the module docstring).

    Args:
        tasks: number of tasks T; task i is in group ``i mod groups``.
        groups: number of planted groups (latent models).
        noise: scale of each task's own noise next to its group's signal (unit variance):
            0 makes a group's tasks identical; 0.3 (default) makes them agree on 85-90%
            of rows; around 1 the groups become hard to tell apart.
        train_size: training rows.
        eval_size: rows in each of validation and test.
        features: input columns ``x0 .. x{features-1}``.
        seed: seeds the latent models, the tasks' noise and the rows (same seed, same table).
    """
    _check_options(tasks, groups, noise, train_size, eval_size, features)
    table = planted_table(tasks=tasks, groups=groups, noise=noise, features=features,
                          rows=train_size + 2 * eval_size, seed=seed)
    data: Splits = {
        "test": table.iloc[:eval_size].reset_index(drop=True),
        "validation": table.iloc[eval_size:2 * eval_size].reset_index(drop=True),
        "train": table.iloc[2 * eval_size:].reset_index(drop=True),
    }
    check_splits(data, "planted suite")
    inputs = [f"x{j}" for j in range(features)]
    return Suite(
        name="planted",
        description=(
            f"Synthetic: {tasks} binary tasks on {features} Gaussian inputs, generated from "
            f"{groups} latent tanh teachers (task i follows teacher i mod {groups}, plus its "
            f"own noise at scale {noise}). The MLP backbone ({LATENT_UNITS} hidden units) "
            "holds one teacher, not all, so training every group together hurts; the planted "
            "partition is in `true_groups`."
        ),
        tasks=[Task(name=name, kind="classification", input=inputs, label=name,
                    labels=BINARY_LABELS, metric="accuracy") for name in task_names(tasks)],
        data=data,
        backbone=BACKBONE,
        recommended={"max_steps": 300, "batch_size": 64, "lr": 3e-3, "eval_every": 100},
        true_groups=planted_groups(tasks, groups),
    )
