"""CPU threads: one for a small model unless `train.threads` says otherwise, and OpenMP
threads that sleep rather than spin (OMP_WAIT_POLICY=PASSIVE set before torch loads)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from polytask import Trainer, load_config
from polytask.train.threads import SMALL_MODEL_PARAMETERS, TORCH_DEFAULT_THREADS, default_threads
from tests.conftest import tabular_config


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch on two threads during the test, as before it afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_tiny_model_gets_one_thread() -> None:
    assert default_threads(nn.Linear(8, 3)) == 1


def test_a_big_model_gets_torchs_default() -> None:
    big = nn.Linear(1000, 1000)
    assert sum(p.numel() for p in big.parameters()) >= SMALL_MODEL_PARAMETERS
    assert default_threads(big) == TORCH_DEFAULT_THREADS


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize(("threads", "expected"), [(None, 1), (2, 2)])
def test_trainer_uses_the_chosen_threads(tmp_path: Path, tabular_file: Path,
                                         threads: int | None, expected: int) -> None:
    config = load_config(tabular_config(tabular_file, max_steps=2, eval_every=2,
                                        threads=threads))
    Trainer(config, tmp_path / "run").fit()
    assert torch.get_num_threads() == expected


def _omp_wait_policy_when_torch_loads(env: dict[str, str]) -> str:
    """What OMP_WAIT_POLICY holds at the moment `import polytask` first imports torch."""
    code = (
        "import os, sys\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            print(os.environ.get('OMP_WAIT_POLICY'))\n"
        "            sys.meta_path.remove(self)\n"
        "sys.meta_path.insert(0, Watch())\n"
        "import polytask\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def test_openmp_threads_sleep_unless_the_user_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _omp_wait_policy_when_torch_loads(env) == "PASSIVE"
    assert _omp_wait_policy_when_torch_loads({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
