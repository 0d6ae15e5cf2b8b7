"""SegNet (the MTAN/Nash-MTL shared network) and the MTAN architecture over it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.errors import ConfigError, DataError
from polytask.models.model import MultiTaskModel
from polytask.models.segnet import SegNet
from polytask.models.sharing import ARCHITECTURES
from polytask.models.sharing.mtan import MTAN
from polytask.models.staged import StagedFeatures

TASKS = ["seg", "depth"]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def heads(width: int) -> dict[str, nn.Module]:
    return {"seg": nn.Conv2d(width, 3, 1), "depth": nn.Conv2d(width, 1, 1)}


def test_published_sizes() -> None:
    """At width 64: SegNet 24.94M parameters, MTAN's attention 19.17M more, which with the
    three MTAN heads of NYUv2 give the 25.06M (split SegNet) and 44.23M (MTAN) models."""
    segnet, mtan = SegNet(64), MTAN(64, ["a", "b", "c"])
    assert count(segnet) == 24_943_296
    assert count(mtan) == 19_173_888
    assert ARCHITECTURES.get("mtan") is MTAN and MTAN.reads_stages


def test_segnet_stages_and_levels() -> None:
    segnet = SegNet(width=4)
    images = torch.randn(2, 3, 32, 64)
    staged = segnet(images, "dense")
    assert isinstance(staged, StagedFeatures)
    assert staged.output.shape == (2, 4, 32, 64)
    assert [out.shape[1] for _, out in staged.encoder] == [4, 8, 16, 32, 32]
    assert [out.shape[1] for _, out in staged.decoder] == [32, 16, 8, 4, 4]
    assert segnet(images, "sequence").shape == (2, 4)  # pooled, for image-level tasks
    with pytest.raises(DataError, match=r"multiples of 32.*got 30x64"):
        segnet(torch.randn(1, 3, 30, 64))


def test_hard_sharing_reads_the_final_map_and_mtan_the_stages() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    plain = MultiTaskModel(SegNet(4), heads(4), levels={t: "dense" for t in TASKS})
    out = plain({t: images for t in TASKS})
    assert out["seg"].shape == (2, 3, 32, 32) and out.features is not None
    mtan = MultiTaskModel(SegNet(4), heads(4), MTAN(4, TASKS), {t: "dense" for t in TASKS})
    out = mtan({t: images for t in TASKS})
    assert out["depth"].shape == (2, 1, 32, 32) and out.features is None


def test_mtan_task_gradient_stays_out_of_other_tasks_attention() -> None:
    torch.manual_seed(0)
    mtan = MTAN(4, TASKS)
    staged = SegNet(4)(torch.randn(2, 3, 32, 32))
    assert isinstance(staged, StagedFeatures)
    out = mtan(staged, ["seg"])
    assert set(out) == {"seg"}
    out["seg"].sum().backward()
    assert all(p.grad is None for p in mtan.task_parameters("depth"))
    assert all(p.grad is not None for p in mtan.task_parameters("seg"))
    private = {id(p) for t in TASKS for p in mtan.task_parameters(t)}
    shared = list(mtan.shared_parameters())
    assert shared and all(id(p) not in private for p in shared)
    assert len(shared) + len(private) == len(list(mtan.parameters()))


def test_mtan_needs_segnet_stages() -> None:
    with pytest.raises(ConfigError, match="mtan attends over the stages of a SegNet"):
        MTAN(4, TASKS)(torch.randn(2, 4), TASKS)
    staged = SegNet(8)(torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"built for stage widths \[4, 8, 16, 32, 32\]"):
        MTAN(4, TASKS)(staged, TASKS)
