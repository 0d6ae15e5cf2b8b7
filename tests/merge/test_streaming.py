"""Streaming merges from safetensors files equal in-memory merges, and write nothing on
bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polytask import merge
from polytask.errors import CheckpointError, ConfigError
from polytask.merge import StateDict, TensorwiseMerger


def _states(count: int) -> tuple[StateDict, dict[str, StateDict]]:
    generator = torch.Generator().manual_seed(0)
    shapes = {"backbone.layer.weight": (8, 6), "backbone.layer.bias": (8,),
              "backbone.norm.weight": (6,), "head.weight": (2, 8)}
    base = {k: torch.randn(s, generator=generator) for k, s in shapes.items()}
    base["backbone.position_ids"] = torch.arange(4)
    experts = {f"t{i}": {k: v + torch.randn(v.shape, generator=generator)
                         if v.is_floating_point() else v.clone() for k, v in base.items()}
               for i in range(count)}
    return base, experts


def _write(folder: Path, base: StateDict, experts: dict[str, StateDict]
           ) -> tuple[Path, dict[str, Path]]:
    save_file(base, folder / "base.safetensors")
    for name, state in experts.items():
        save_file(state, folder / f"{name}.safetensors")
    return folder / "base.safetensors", {n: folder / f"{n}.safetensors" for n in experts}


@pytest.mark.parametrize(("name", "options"), [
    ("average", {}), ("task_arithmetic", {"scale": 0.7}), ("ties", {"density": 0.5}),
    ("dare", {"density": 0.5, "combine": "ties", "seed": 3})])
def test_streaming_equals_the_in_memory_merge_bit_for_bit(
        tmp_path: Path, name: str, options: dict[str, object]) -> None:
    base, experts = _states(3)
    base_file, expert_files = _write(tmp_path, base, experts)
    merger = merge.get(name, **options)
    assert isinstance(merger, TensorwiseMerger)
    merger.merge_files(base_file, expert_files, tmp_path / "out.safetensors", prefix="backbone.")
    streamed = load_file(tmp_path / "out.safetensors")
    strip = {k: v for k, v in base.items() if k.startswith("backbone.")}
    in_memory = merger.merge(strip, {n: {k: s[k] for k in strip} for n, s in experts.items()})
    assert streamed.keys() == in_memory.keys()
    for key, value in in_memory.items():
        assert torch.equal(streamed[key], value), key
    assert torch.equal(streamed["backbone.position_ids"], base["backbone.position_ids"])


def test_an_expert_file_missing_a_tensor_writes_nothing(tmp_path: Path) -> None:
    base, experts = _states(2)
    del experts["t1"]["backbone.layer.bias"]
    base_file, expert_files = _write(tmp_path, base, experts)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConfigError, match=r"expert 't1' has no parameter 'backbone.layer.bias'"):
        merge.get("ties").merge_files(base_file, expert_files, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "base.safetensors", "t0.safetensors", "t1.safetensors"]


def test_keys_outside_the_prefix_may_differ(tmp_path: Path) -> None:
    base, experts = _states(2)
    experts["t1"]["head.weight"] = torch.zeros(5, 8)  # a head of another size
    base_file, expert_files = _write(tmp_path, base, experts)
    merge.get("average").merge_files(base_file, expert_files, tmp_path / "out.safetensors",
                                     prefix="backbone.")
    assert "head.weight" not in load_file(tmp_path / "out.safetensors")


def test_an_unreadable_expert_file_is_named(tmp_path: Path) -> None:
    base, experts = _states(1)
    base_file, expert_files = _write(tmp_path, base, experts)
    expert_files["t0"].write_bytes(b"not safetensors")
    out = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match="expert 't0' weights file"):
        merge.get("average").merge_files(base_file, expert_files, out)
    assert not out.exists()
