"""Reading the preprocessed dense-prediction folders of the MTAN / Nash-MTL / LibMTL code:
``<root>/<split>/<part>/<index>.npy`` with index 0..N-1 in every part of a split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from polytask.errors import DataError


def user_folder(path: str | Path | None, suite: str, layout: str) -> Path:
    """The data folder a user gave to a suite; a DataError naming it when it is not there."""
    if path is None:
        raise DataError(f"suite {suite!r} reads a folder you download yourself (nothing is "
                        f"downloaded): pass its path, e.g. suite: {{name: {suite}, path: "
                        f"/data/{suite}}}. Expected layout: {layout}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"suite {suite!r}: the data folder {str(folder)!r} does not exist; "
                        f"give the folder that holds {layout}")
    return folder


def npy_files(folder: Path, suite: str) -> list[Path]:
    """The `<index>.npy` files of one part folder, in index order."""
    if not folder.is_dir():
        raise DataError(f"suite {suite!r}: the folder {str(folder)!r} is missing; the data "
                        "folder must hold the preprocessed layout <split>/<part>/<index>.npy")
    files = [f for f in folder.glob("*.npy") if f.stem.isdigit()]
    if not files:
        raise DataError(f"suite {suite!r}: no <index>.npy file in {str(folder)!r}")
    return sorted(files, key=lambda f: int(f.stem))


def split_table(root: Path, split: str, parts: Mapping[str, str], suite: str,
                limit: int | None) -> pd.DataFrame:
    """One row per example of `root/split`: column -> the path of its `.npy` in each part
    folder (`parts`: column name -> folder name); the first `limit` examples if given."""
    columns = {column: npy_files(root / split / folder, suite)
               for column, folder in parts.items()}
    names = {column: [f.name for f in files] for column, files in columns.items()}
    first_column, first = next(iter(names.items()))
    for column, listed in names.items():
        if listed != first:
            raise DataError(
                f"suite {suite!r}: {str(root / split / parts[column])!r} holds "
                f"{len(listed)} files and {str(root / split / parts[first_column])!r} "
                f"{len(first)}, or their names differ; every part of a split needs the same "
                "<index>.npy files")
    table = pd.DataFrame({column: [str(f) for f in files] for column, files in columns.items()})
    return table.iloc[:limit].reset_index(drop=True) if limit is not None else table
