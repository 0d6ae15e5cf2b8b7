"""`celeba`: the 40 binary face attributes of CelebA, one classification task each.

Liu, Luo, Wang, Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015; the
40-task benchmark of Sener & Koltun (MGDA-UB, 2018), FAMO and others. Reads the official
files from a folder you give (nothing is downloaded): ``list_attr_celeba.txt`` (a count
line, a line of the 40 attribute names, then ``<image> <40 values of 1 or -1>`` per
image), the images under ``img_align_celeba/``, and, when present,
``list_eval_partition.txt`` (``<image> <0 train | 1 validation | 2 test>``), the official
split; without it the splits are carved with a fixed seed. Attribute -1 is label "0".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from polytask.errors import DataError
from polytask.models.spec import BackboneSpec, ImageSpec
from polytask.suites._base import SUITES, Splits, Suite, carve_splits
from polytask.suites._folders import user_folder
from polytask.tasks.spec import Task

LAYOUT = "list_attr_celeba.txt, img_align_celeba/ and (optionally) list_eval_partition.txt"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
IMAGES = "img_align_celeba"
SPLIT_IDS = {0: "train", 1: "validation", 2: "test"}


def read_attributes(file: Path) -> pd.DataFrame:
    """The attribute table: an `image` column (file name) and one "0"/"1" column each."""
    if not file.is_file():
        raise DataError(f"suite 'celeba': {str(file)!r} does not exist; the folder must hold "
                        f"the official {ATTRIBUTES}")
    lines = file.read_text().splitlines()
    if len(lines) < 3:
        raise DataError(f"suite 'celeba': {str(file)!r} has {len(lines)} lines; expected a "
                        "count line, the attribute names and one line per image")
    names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(names) + 1
                or any(v not in ("1", "-1") for v in r[1:])), None)
    if bad is not None:
        raise DataError(f"suite 'celeba': line {bad + 3} of {str(file)!r} is not an image name "
                        f"followed by {len(names)} values of 1 or -1: {' '.join(rows[bad])!r}")
    table = pd.DataFrame([r[1:] for r in rows], columns=names).replace({"-1": "0"})
    table.insert(0, "image", [r[0] for r in rows])
    return table


def _splits(root: Path, table: pd.DataFrame, train_size: int | None,
            eval_size: int | None) -> Splits:
    partition = root / PARTITION
    if not partition.is_file():
        return carve_splits(table, train_size=train_size, eval_size=eval_size)
    split_of = dict(line.split() for line in partition.read_text().splitlines() if line.strip())
    missing = [name for name in table["image"] if name not in split_of]
    if missing:
        raise DataError(f"suite 'celeba': {str(partition)!r} gives no split for {missing[0]} "
                        f"(and {len(missing) - 1} more); use the official file or remove it")
    assigned = table["image"].map(lambda name: SPLIT_IDS.get(int(split_of[name]), "?"))
    limits = {"train": train_size, "validation": eval_size, "test": eval_size}
    return {split: table[assigned == split].iloc[:limit].reset_index(drop=True)
            for split, limit in limits.items()}


@SUITES.register("celeba", paper="Deep Learning Face Attributes in the Wild (Liu et al. 2015)")
def load_celeba(*, path: str | None = None, train_size: int | None = None,
                eval_size: int | None = None, image_size: int = 64) -> Suite:
    """CelebA's 40 attributes from the official files in `path`.

    Args:
        path: the folder holding the attribute file and the images.
        train_size: training images kept (None: all).
        eval_size: validation/test images kept (None: all).
        image_size: images are resized to image_size x image_size (64 as in FAMO).
    """
    root = user_folder(path, "celeba", LAYOUT)
    table = read_attributes(root / ATTRIBUTES)
    splits = _splits(root, table, train_size, eval_size)
    for frame in splits.values():
        frame["image"] = [str(root / IMAGES / name) for name in frame["image"]]
    attributes = [c for c in table.columns if c != "image"]
    tasks = [Task(name=a, kind="classification", input="image", label=a, labels=["0", "1"])
             for a in attributes]
    return Suite(
        name="celeba",
        description=(f"CelebA ({root}): {len(attributes)} binary face attributes, one "
                     "classification task each, over the aligned face images."),
        tasks=tasks,
        data=splits,
        backbone=BackboneSpec(type="torchvision", name="resnet18",
                              image=ImageSpec(size=(image_size, image_size))),
        recommended={"batch_size": 256, "lr": 1e-3},
    )
