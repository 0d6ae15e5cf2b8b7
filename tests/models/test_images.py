"""Image inputs: every input form decodes to the same uint8 tensor, decoding is cached,
augmentation moves images and dense labels together, and training batches (augmented,
with or without worker processes) resume exactly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from polytask import load_config
from polytask.errors import DataError
from polytask.models import images as images_module
from polytask.models.images import IMAGE_KEY, ImageInputs, ImageNormalize, augment_batch
from polytask.models.spec import AugmentSpec, ImageSpec
from polytask.pipeline import prepare
from polytask.tasks.data import BatchStream, read_spec
from polytask.tasks.spec import DataSpec


def pictures(count: int = 4, seed: int = 0) -> np.ndarray:
    """`count` random RGB images, N x H x W x C uint8 (6 x 5 pixels)."""
    return np.random.default_rng(seed).integers(0, 256, (count, 6, 5, 3), dtype=np.uint8)


def expected(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 1)))


def encode(frame: pd.DataFrame, spec: ImageSpec | None = None) -> torch.Tensor:
    inputs = ImageInputs(spec)
    inputs.fit(frame, ["image"])
    return inputs.encode(frame, ["image"])[IMAGE_KEY]


def write_pngs(folder: Path, array: np.ndarray) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(array):
        Image.fromarray(image).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    return names


def test_a_column_of_relative_paths_reads_from_root(tmp_path: Path) -> None:
    array = pictures()
    names = write_pngs(tmp_path / "pics", array)
    frame = pd.DataFrame({"image": names})
    assert torch.equal(encode(frame, ImageSpec(root=str(tmp_path / "pics"))), expected(array))
    with pytest.raises(DataError, match=r"0\.png.*does not exist.*image\.root"):
        encode(frame)


def test_an_image_folder_loads_with_its_class_labels(tmp_path: Path) -> None:
    array = pictures(6)
    write_pngs(tmp_path / "folder" / "cat", array[:3])
    write_pngs(tmp_path / "folder" / "dog", array[3:])
    frame = read_spec(DataSpec(path=str(tmp_path / "folder")), "data")["train"]
    assert sorted(frame["label"].tolist()) == [0, 0, 0, 1, 1, 1]
    got = encode(frame)
    assert got.shape == (6, 3, 6, 5)
    cats = got[torch.tensor((frame["label"] == 0).to_numpy())]
    assert sorted(map(bytes, cats.numpy())) == sorted(map(bytes, expected(array[:3]).numpy()))


def test_in_memory_arrays_grey_channels_first_and_float(tmp_path: Path) -> None:
    array = pictures()
    assert torch.equal(encode(pd.DataFrame({"image": list(array)})), expected(array))
    channels_first = list(np.moveaxis(array, -1, 1))
    assert torch.equal(encode(pd.DataFrame({"image": channels_first})), expected(array))
    grey = array[..., 0]
    assert torch.equal(encode(pd.DataFrame({"image": list(grey)})),
                       torch.from_numpy(grey)[:, None])
    unit = list(array.astype(np.float32) / 255.0)  # floats in [0, 1] are scaled back
    assert torch.equal(encode(pd.DataFrame({"image": unit})), expected(array))


def test_npy_cells_an_npz_file_and_parquet_columns(tmp_path: Path) -> None:
    array = pictures()
    for i, image in enumerate(array):
        np.save(tmp_path / f"{i}.npy", image)
    frame = pd.DataFrame({"image": [str(tmp_path / f"{i}.npy") for i in range(4)]})
    assert torch.equal(encode(frame), expected(array))

    np.savez(tmp_path / "train.npz", image=array, label=np.arange(4))
    table = read_spec(DataSpec(path=str(tmp_path / "train.npz")), "data")["train"]
    assert table["label"].tolist() == [0, 1, 2, 3]
    assert torch.equal(encode(table), expected(array))

    png = []
    for image in array:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png.append(buffer.getvalue())
    pd.DataFrame({"image": png}).to_parquet(tmp_path / "bytes.parquet")
    pd.DataFrame({"image": [image.tolist() for image in array]}).to_parquet(
        tmp_path / "lists.parquet")
    for name in ("bytes", "lists"):
        table = read_spec(DataSpec(path=str(tmp_path / f"{name}.parquet")), "data")["train"]
        assert torch.equal(encode(table), expected(array)), name


def test_mixed_sizes_need_a_size_and_resize_and_convert(tmp_path: Path) -> None:
    cells = [np.zeros((6, 5, 3), np.uint8), np.full((8, 8), 200, np.uint8)]
    with pytest.raises(DataError, match=r"differ in shape.*image\.size"):
        encode(pd.DataFrame({"image": cells}))
    got = encode(pd.DataFrame({"image": cells}), ImageSpec(size=(4, 4), channels=1))
    assert got.shape == (2, 1, 4, 4) and got.dtype == torch.uint8
    assert int(got[1].min()) == 200 and int(got[0].max()) == 0


def test_decoding_is_cached_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    array = pictures()
    names = write_pngs(tmp_path, array)
    frame = pd.DataFrame({"image": names})
    spec = ImageSpec(root=str(tmp_path))
    first = encode(frame, spec)

    def refuse(*args: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(images_module, "_read_image_file", refuse)
    inputs = ImageInputs(spec)
    inputs.channels, inputs.size = 3, (6, 5)
    assert torch.equal(inputs.encode(frame, ["image"])[IMAGE_KEY], first)


def test_augmentation_moves_the_image_and_its_dense_label_together() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    segmentation = images[:, 0].long()  # a dense label equal to channel 0
    normals = images.float()
    classes = torch.arange(16)
    augment = AugmentSpec(crop_padding=3, flip=True)
    out, labels = augment_batch(images, {"seg": segmentation, "normals": normals,
                                         "cls": classes}, augment,
                                torch.Generator().manual_seed(0), {"seg": -1}, {"normals": 0})
    kept = labels["seg"] != -1  # padding gives the label its fill value, the image zeros
    assert torch.equal(out[:, 0].long()[kept], labels["seg"][kept])
    assert bool((out[:, 0][~kept] == 0).all()) and bool((~kept).any())
    assert torch.equal(labels["normals"][:, 1:], out[:, 1:].float())
    flipped = labels["normals"][:, 0] < 0  # the x component flips sign with the image
    assert bool(flipped.any()) and bool((~flipped & (out[:, 0] > 0)).any())
    assert torch.equal(labels["cls"], classes)
    again, _ = augment_batch(images, {}, augment, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)


def test_normalize_scales_and_standardises() -> None:
    norm = ImageNormalize([0.5], [0.25], channels=3)
    out = norm(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8))
    assert out.shape == (1, 3, 2, 2) and torch.allclose(out, torch.full_like(out, 2.0))


def image_config(frame: pd.DataFrame, workers: int = 0) -> object:
    return load_config({
        "data": frame,
        "tasks": [{"name": "digit", "kind": "classification", "input": "image",
                   "label": "digit"}],
        "model": {"backbone": {"type": "lenet",
                               "image": {"augment": {"crop_padding": 2, "flip": True}}}},
        "train": {"max_steps": 2, "batch_size": 8, "num_workers": workers},
    })


def test_augmented_batches_are_the_same_with_workers_and_after_resume() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"image": list(rng.integers(0, 256, (40, 16, 16), dtype=np.uint8)),
                          "digit": rng.integers(0, 3, 40).astype(str)})
    data = prepare(image_config(frame))[0]
    assert data.batch_transform is not None

    def batches(stream: BatchStream, count: int) -> list[torch.Tensor]:
        return [stream.next_batch(["digit"])["digit"][0][IMAGE_KEY] for _ in range(count)]

    plain = batches(BatchStream(data, 8, seed=3), 8)
    unaugmented = data.splits["shared"]["train"].inputs[IMAGE_KEY]
    assert not any(torch.equal(b, unaugmented[:8]) for b in plain)
    workers = BatchStream(data, 8, seed=3, num_workers=2)
    first = batches(workers, 3)
    state = workers.state_dict()
    resumed = BatchStream(data, 8, seed=3, num_workers=2)
    resumed.load_state_dict(state)
    rest = batches(resumed, 5)
    workers.close()
    resumed.close()
    assert all(torch.equal(a, b) for a, b in zip(plain, first + rest, strict=True))
