"""One YAML reader: `polytask train` and `polytask bench` read a file the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.bench import bench_config
from polytask.config import load_config
from polytask.errors import ConfigError
from polytask.files import cache_dir, read_yaml
from polytask.train import run_dir

CONFIG = """\
tasks:
  - {name: a, kind: regression, input: [x], label: y}
data: {path: data.csv}
balancer: {name: dwa, temperature: 4e-1}
"""


def test_train_and_bench_read_exponent_floats_alike(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG)
    trained = load_config(path).balancer.options
    benched = bench_config(path).balancer.options
    assert trained == benched
    assert trained["temperature"] == 0.4 and isinstance(benched["temperature"], float)


@pytest.mark.parametrize("read", [load_config, bench_config], ids=["train", "bench"])
def test_train_and_bench_refuse_duplicate_keys(tmp_path: Path, read: object) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG + "balancer: ew\n")
    with pytest.raises(ConfigError, match="duplicate key 'balancer'"):
        read(path)  # type: ignore[operator]


def test_a_run_config_is_read_like_a_user_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("train: {lr: 3e-4}\n")
    assert run_dir._saved_config(tmp_path) == {"train": {"lr": 3e-4}}
    assert read_yaml(tmp_path / "config.yaml") == {"train": {"lr": 3e-4}}


def test_cache_dir_follows_the_environment(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path))
    assert cache_dir("suites") == tmp_path / "suites"
    monkeypatch.delenv("POLYTASK_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "polytask"
