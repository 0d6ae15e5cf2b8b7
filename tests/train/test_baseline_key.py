"""Single-task baselines are keyed by the content of the data, and the Python API reads or
trains them as `baselines:` says, like the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from polytask.bench import _split_note
from polytask.config import load_config
from polytask.train.baselines import baseline_dir
from polytask.train.trainer import Trainer
from tests.conftest import tabular_config


@pytest.fixture
def data_file(tmp_path: Path, tabular_file: Path) -> Path:
    """A private copy of the shared tabular CSV, free to edit."""
    path = tmp_path / "data" / "shared.csv"
    path.parent.mkdir()
    shutil.copy(tabular_file, path)
    return path


def _config(path: Path, tmp_path: Path, **train: object) -> dict[str, object]:
    config = tabular_config(path, **train)
    config["baselines_dir"] = str(tmp_path / "baselines")
    return config


def test_an_edited_data_file_gets_other_baselines(tmp_path: Path, data_file: Path) -> None:
    config = load_config(_config(data_file, tmp_path))
    before = baseline_dir(config, "up")
    frame = pd.read_csv(data_file)
    frame.loc[0, "a"] = 99.0  # same path, other content
    frame.to_csv(data_file, index=False)
    assert baseline_dir(config, "up") != before


def test_the_same_content_elsewhere_shares_baselines(tmp_path: Path, data_file: Path) -> None:
    moved = tmp_path / "moved.csv"
    shutil.copy(data_file, moved)
    assert (baseline_dir(load_config(_config(data_file, tmp_path)), "up")
            == baseline_dir(load_config(_config(moved, tmp_path)), "up"))


def test_the_split_seed_is_part_of_the_key(tmp_path: Path, data_file: Path) -> None:
    config = _config(data_file, tmp_path)
    assert (baseline_dir(load_config(config), "up")
            != baseline_dir(load_config(config, ["train.split_seed=1"]), "up"))


def test_the_python_api_trains_missing_baselines(tmp_path: Path, data_file: Path) -> None:
    config = _config(data_file, tmp_path, max_steps=4, eval_every=2)
    config["baselines"] = "auto"
    results = Trainer(load_config(config), tmp_path / "run").fit()
    assert isinstance(results["delta_m"], float)
    assert all(t["baseline"] is not None for t in results["tasks"].values())
    assert len(list((tmp_path / "baselines").iterdir())) == 3
    config["baselines"] = "cached"  # now read from the cache, as `polytask train` does
    cached = Trainer(load_config(config), tmp_path / "again").fit()
    assert cached["delta_m"] == results["delta_m"]
    config["baselines"] = "none"
    assert Trainer(load_config(config), tmp_path / "none").fit()["delta_m"] is None


def test_bench_notes_say_which_split_the_table_shows() -> None:
    carved = [{"splits": {"sources": {"shared": {"carved": ["test", "validation"]}}}}]
    note = _split_note(carved, 0)
    assert "test and validation carved" in note and "split_seed 0" in note
    assert "fixed across seeds" in note
    given = [{"splits": {"sources": {"shared": {"carved": []}}}}]
    assert "as the dataset gives them" in _split_note(given, 0)
