"""`nyuv2`: NYUv2 semantic segmentation (13 classes), depth and surface normals.

Silberman, Hoiem, Kohli, Fergus, "Indoor Segmentation and Support Inference from RGBD
Images", ECCV 2012, in the preprocessed form of Liu et al. (MTAN, CVPR 2019) that the
MTAN, CAGrad, Nash-MTL, FAMO and LibMTL code read: 795 training and 654 validation images
of 288 x 384, as ``<path>/{train,val}/{image,label,depth,normal}/<index>.npy`` (image
H x W x 3 in [0, 1], label H x W with -1 = unlabelled, depth H x W x 1 with 0 = unknown,
normal H x W x 3 with 0 = unknown). Nothing is downloaded: pass the folder you have.

As in those papers there is no separate validation set: the `val` folder is both the
validation and the test split (the papers report its metrics at the last epochs).
"""

from __future__ import annotations

from pathlib import Path

from polytask.models.spec import BackboneSpec
from polytask.suites._base import SUITES, Suite
from polytask.suites._folders import split_table, user_folder
from polytask.tasks.spec import Task

LAYOUT = "train/ and val/, each with image/, label/, depth/ and normal/ folders of <index>.npy"
PARTS = {"image": "image", "segmentation": "label", "depth": "depth", "normals": "normal"}
NUM_CLASSES = 13


@SUITES.register("nyuv2", paper="Indoor Segmentation and Support Inference from RGBD Images "
                 "(Silberman et al. 2012); preprocessed by MTAN (Liu et al. 2019)")
def load_nyuv2(*, path: str | None = None, train_size: int | None = None,
               eval_size: int | None = None, width: int = 64) -> Suite:
    """NYUv2 from the preprocessed MTAN folder at `path`.

    Args:
        path: the folder holding train/ and val/.
        train_size: training images kept (None: all).
        eval_size: validation/test images kept (None: all).
        width: the SegNet backbone's first-stage width (64: the published SegNet).
    """
    root = user_folder(path, "nyuv2", LAYOUT)
    train = split_table(root, "train", PARTS, "nyuv2", train_size)
    val = split_table(root, "val", PARTS, "nyuv2", eval_size)
    tasks = [
        Task(name="segmentation", kind="segmentation", input="image", label="segmentation",
             options={"num_classes": NUM_CLASSES}),
        Task(name="depth", kind="depth", input="image", label="depth"),
        Task(name="normals", kind="normals", input="image", label="normals"),
    ]
    return Suite(
        name="nyuv2",
        description=(
            f"NYUv2 ({Path(root)}): 13-class semantic segmentation, depth and surface "
            "normals of indoor scenes, 288 x 384, the MTAN preprocessing; val is also test."
        ),
        tasks=tasks,
        data={"train": train, "validation": val, "test": val.copy()},
        backbone=BackboneSpec(type="segnet", width=width),
        recommended={"epochs": 200, "batch_size": 2, "lr": 1e-4},
    )
