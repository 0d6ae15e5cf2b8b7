"""`shapes`: a small synthetic dense suite (segmentation, depth, surface normals).

Each image shows a tilted floor, a box and a ball, rendered from their geometry, so the
three dense tasks share what the image shows: which object covers a pixel (segmentation:
background / box / ball), how far it is (depth) and which way its surface faces (normals;
the ball's shading follows its normals). About 3% of the pixels carry no label at all
(segmentation -1, depth 0, normal 0), to exercise the valid-pixel masks. Generated in
memory from a fixed seed, in well under a second; made for tests and demos of the dense
kinds, SegNet and MTAN on a CPU.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from polytask.models.spec import AugmentSpec, BackboneSpec, ImageSpec
from polytask.suites._base import SEED, SUITES, Suite
from polytask.tasks.spec import Task

CLASSES = ["background", "box", "ball"]
#: Share of pixels left unlabelled for every task.
UNLABELLED = 0.03
FLOOR_NORMAL = np.array([0.0, -0.6, 0.8], dtype=np.float32)
COLOURS = np.array([[0.55, 0.5, 0.45], [0.8, 0.25, 0.2], [0.2, 0.6, 0.85]], dtype=np.float32)


def _scene(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """One image (H x W x 3 in [0, 1]) with its segmentation, depth and normal maps."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    label = np.zeros((size, size), dtype=np.int64)
    depth = 4.0 - 2.0 * y / size
    normal = np.broadcast_to(FLOOR_NORMAL, (size, size, 3)).copy()
    # the box: an axis-aligned rectangle facing the camera
    h, w = rng.integers(size // 5, size // 2, size=2)
    top, left = rng.integers(0, size - h), rng.integers(0, size - w)
    box = (y >= top) & (y < top + h) & (x >= left) & (x < left + w)
    label[box], depth[box], normal[box] = 1, rng.uniform(1.5, 2.5), (0.0, 0.0, 1.0)
    # the ball, drawn last (in front): a hemisphere whose normals point outwards
    radius = rng.uniform(size / 8, size / 4)
    cy, cx = rng.uniform(radius, size - radius, size=2)
    dy, dx = (y - cy) / radius, (x - cx) / radius
    ball = dy**2 + dx**2 < 1
    bulge = np.sqrt(np.clip(1 - dy**2 - dx**2, 0, 1))
    label[ball] = 2
    depth[ball] = rng.uniform(1.0, 1.5) - 0.3 * bulge[ball]
    normal[ball] = np.stack([dx, dy, bulge], axis=-1)[ball]
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    shade = 0.45 + 0.55 * normal[..., 2:3] * (1.6 - 0.15 * depth[..., None])
    image = COLOURS[label] * shade + rng.normal(0, 0.03, (size, size, 3))
    blank = rng.random((size, size)) < UNLABELLED
    label[blank], depth[blank], normal[blank] = -1, 0.0, 0.0
    return {"image": np.clip(image, 0, 1).astype(np.float32), "segmentation": label,
            "depth": depth.astype(np.float32)[..., None], "normals": normal}


def _split(rng: np.random.Generator, rows: int, size: int) -> pd.DataFrame:
    scenes = [_scene(rng, size) for _ in range(rows)]
    return pd.DataFrame({key: [s[key] for s in scenes] for key in scenes[0]})


def shapes_tasks(input_column: str = "image") -> list[Task]:
    """The suite's three dense tasks over `input_column`."""
    return [
        Task(name="segmentation", kind="segmentation", input=input_column,
             label="segmentation", labels=CLASSES),
        Task(name="depth", kind="depth", input=input_column, label="depth"),
        Task(name="normals", kind="normals", input=input_column, label="normals"),
    ]


@SUITES.register("shapes", paper="Synthetic scenes of a box and a ball on a floor (polytask)")
def load_shapes(*, train_size: int = 96, eval_size: int = 32, size: int = 32,
                width: int = 8) -> Suite:
    """Shapes: segmentation, depth and normals of synthetic scenes.

    Args:
        train_size: training images.
        eval_size: images in each of validation and test.
        size: image height and width in pixels (a multiple of 32, for SegNet).
        width: the SegNet backbone's first-stage width (the published SegNet: 64).
    """
    if train_size < 1 or eval_size < 1:
        raise ValueError(f"train_size and eval_size must be positive, got {train_size} and "
                         f"{eval_size}")
    rng = np.random.default_rng(SEED)
    data = {split: _split(rng, rows, size) for split, rows in
            (("train", train_size), ("validation", eval_size), ("test", eval_size))}
    return Suite(
        name="shapes",
        description=(
            "Synthetic scenes (a box and a ball on a tilted floor, rendered from their "
            "geometry): per-pixel segmentation (3 classes), depth and surface normals on "
            "one image set, about 3% of the pixels unlabelled. Small enough to train SegNet "
            "and MTAN on a CPU in seconds."
        ),
        tasks=shapes_tasks(),
        data=data,
        backbone=BackboneSpec(type="segnet", width=width,
                              image=ImageSpec(augment=AugmentSpec(flip=True))),
        recommended={"max_steps": 300, "batch_size": 8, "lr": 1e-3, "eval_every": 100},
    )
