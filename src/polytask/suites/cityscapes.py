"""`cityscapes`: Cityscapes semantic segmentation (7 or 19 classes) and depth.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016,
in the preprocessed form of Liu et al. (MTAN, CVPR 2019) that the MTAN, CAGrad, Nash-MTL,
FAMO and LibMTL code read: 2,975 training and 500 validation images of 128 x 256, as
``<path>/{train,val}/{image,label_7,label_19,depth}/<index>.npy`` (LibMTL's copy names the
7-class folder ``label``). The 2-task benchmark of those papers is the 7-class variant
(`classes: 7`, the default) with depth. Labels use -1 for unlabelled pixels, depth 0 for
unknown. Nothing is downloaded: pass the folder you have. The `val` folder is both the
validation and the test split, as in the papers.
"""

from __future__ import annotations

from typing import Literal

from polytask.errors import DataError
from polytask.models.spec import BackboneSpec
from polytask.suites._base import SUITES, Suite
from polytask.suites._folders import split_table, user_folder
from polytask.tasks.spec import Task

LAYOUT = "train/ and val/, each with image/, label_7/ (or label/), label_19/ and depth/ " \
         "folders of <index>.npy"


@SUITES.register("cityscapes", paper="The Cityscapes Dataset for Semantic Urban Scene "
                 "Understanding (Cordts et al. 2016); preprocessed by MTAN (Liu et al. 2019)")
def load_cityscapes(*, path: str | None = None, classes: Literal[7, 19] = 7,
                    train_size: int | None = None, eval_size: int | None = None,
                    width: int = 64) -> Suite:
    """Cityscapes from the preprocessed MTAN folder at `path`.

    Args:
        path: the folder holding train/ and val/.
        classes: 7 (the 2-task benchmark) or 19 segmentation classes.
        train_size: training images kept (None: all).
        eval_size: validation/test images kept (None: all).
        width: the SegNet backbone's first-stage width (64: the published SegNet).
    """
    if classes not in (7, 19):
        raise DataError(f"suite cityscapes: classes must be 7 or 19, got {classes!r}")
    root = user_folder(path, "cityscapes", LAYOUT)
    label = f"label_{classes}"
    if classes == 7 and not (root / "train" / label).is_dir() and (root / "train" /
                                                                   "label").is_dir():
        label = "label"  # LibMTL's copy
    parts = {"image": "image", "segmentation": label, "depth": "depth"}
    train = split_table(root, "train", parts, "cityscapes", train_size)
    val = split_table(root, "val", parts, "cityscapes", eval_size)
    tasks = [
        Task(name="segmentation", kind="segmentation", input="image", label="segmentation",
             options={"num_classes": classes}),
        Task(name="depth", kind="depth", input="image", label="depth"),
    ]
    return Suite(
        name="cityscapes",
        description=(f"Cityscapes ({root}): {classes}-class semantic segmentation and depth "
                     "of street scenes, 128 x 256, the MTAN preprocessing; val is also test."),
        tasks=tasks,
        data={"train": train, "validation": val, "test": val.copy()},
        backbone=BackboneSpec(type="segnet", width=width),
        recommended={"batch_size": 8, "lr": 1e-4},
    )
