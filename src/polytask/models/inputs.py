"""Input encoders: turn table columns into tensors once, before training.

Each backbone type has one: `TextInputs` tokenizes text columns (and word lists for token
tasks) with the backbone's tokenizer; `TabularInputs` standardises numeric columns and
indexes categorical ones. Encoded inputs are a dict of tensors whose first dimension is the
row; `collate` slices a batch out of it. Tokenization results are cached on disk, keyed by
a hash of the tokenizer and the texts, so a second run (or a baseline) skips the work.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from polytask.errors import DataError

Encoded = dict[str, Tensor]
#: Per-token tensors (padded to max_length), trimmed to the longest sequence of a batch.
SEQUENCE_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "word_index"})


def cache_dir() -> Path:
    """Where polytask caches derived data: `$POLYTASK_CACHE` or ~/.cache/polytask."""
    root = os.environ.get("POLYTASK_CACHE") or Path.home() / ".cache" / "polytask"
    return Path(root)


def content_hash(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def cached_tensors(kind: str, key: str, compute: Any) -> Encoded:
    """Load `kind/key.safetensors` from the cache, or compute, save atomically and return."""
    path = cache_dir() / kind / f"{key}.safetensors"
    if path.exists():
        try:
            return load_file(path)
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    tensors: Encoded = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)
    return tensors


def collate(encoded: Encoded, indices: Tensor) -> Encoded:
    """The rows `indices` of every tensor; padded token tensors are trimmed to the batch's
    longest sequence."""
    batch = {k: v[indices] for k, v in encoded.items()}
    if "attention_mask" in batch:
        length = int(batch["attention_mask"].sum(dim=1).max().clamp(min=1))
        batch = {k: v[:, :length] if k in SEQUENCE_KEYS else v for k, v in batch.items()}
    return batch


class TextInputs:
    """Tokenizes one text column, a text pair, or a column of word lists (token tasks)."""

    def __init__(self, tokenizer: Any, name: str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length

    def fit(self, train: pd.DataFrame, columns: list[str]) -> None:
        del train, columns  # the tokenizer is pretrained

    def state(self) -> dict[str, Any]:
        return {}

    def encode(self, frame: pd.DataFrame, columns: list[str], words: bool = False) -> Encoded:
        if len(columns) > 2:
            raise DataError(
                f"a text backbone reads one text column or a pair, got {columns}; "
                "join the columns first or list at most two."
            )
        values = [frame[c].tolist() for c in columns]
        key = content_hash(self.name, self.max_length, words, values)
        return cached_tensors("tokenized", key, lambda: self._tokenize(values, words))

    def _tokenize(self, values: list[list[Any]], words: bool) -> Encoded:
        if words:
            rows = [list(map(str, r)) if r is not None else [] for r in values[0]]
            out = self.tokenizer(
                rows, is_split_into_words=True, truncation=True, max_length=self.max_length,
                padding="max_length", return_tensors="pt",
            )
            word_index = torch.full_like(out["input_ids"], -1)
            for i in range(len(rows)):
                previous = None
                for j, w in enumerate(out.word_ids(i)):
                    if w is not None and w != previous:
                        word_index[i, j] = w  # first sub-word of word w
                    previous = w
            return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"],
                    "word_index": word_index}
        texts = [["" if v is None else str(v) for v in column] for column in values]
        out = self.tokenizer(
            *texts, truncation=True, max_length=self.max_length, padding="max_length",
            return_tensors="pt",
        )
        encoded = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
        if "token_type_ids" in out:
            encoded["token_type_ids"] = out["token_type_ids"]
        return encoded


class TabularInputs:
    """Numeric columns standardised with train statistics; other columns are categorical,
    indexed by a train vocabulary (index 0 = a value unseen in train)."""

    def __init__(self) -> None:
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.mean: list[float] = []
        self.std: list[float] = []
        self.vocab: dict[str, list[str]] = {}

    def fit(self, train: pd.DataFrame, columns: list[str]) -> None:
        self.numeric = [c for c in columns if pd.api.types.is_numeric_dtype(train[c])
                        and not pd.api.types.is_bool_dtype(train[c])]
        self.categorical = [c for c in columns if c not in self.numeric]
        try:  # infinite values are reported by `encode`, naming the split
            values = train[self.numeric].astype("float64").replace([np.inf, -np.inf], np.nan)
        except (TypeError, ValueError):
            values = train[self.numeric].apply(pd.to_numeric, errors="coerce")
        self.mean = values.mean().fillna(0.0).tolist()
        self.std = values.std(ddof=0).replace(0.0, 1.0).fillna(1.0).tolist()
        self.vocab = {c: sorted({str(v) for v in train[c].tolist()}) for c in self.categorical}

    def state(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical, "mean": self.mean,
                "std": self.std, "vocab": self.vocab}

    def load_state(self, state: dict[str, Any]) -> None:
        self.numeric, self.categorical = state["numeric"], state["categorical"]
        self.mean, self.std, self.vocab = state["mean"], state["std"], state["vocab"]

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        """The numeric columns as float64, naming the column and value that is not a number."""
        try:
            return frame[self.numeric].astype("float64").to_numpy()
        except (TypeError, ValueError):
            for column in self.numeric:
                converted = pd.to_numeric(frame[column], errors="coerce")
                bad = frame[column][converted.isna() & frame[column].notna()]
                if len(bad):
                    raise DataError(
                        f"numeric input column {column!r} holds {bad.iloc[0]!r} (row "
                        f"{bad.index[0]}), which is not a number; the column is numeric in "
                        "the training split. Clean the value, or make the column categorical "
                        "by giving it text values in every split."
                    ) from None
            raise

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) + 1 for c in self.categorical]

    def encode(self, frame: pd.DataFrame, columns: list[str], words: bool = False) -> Encoded:
        if words:
            raise DataError("token classification needs a text backbone (model.backbone.type: hf)")
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise DataError(f"input column(s) {missing} are missing; found {list(frame.columns)}")
        numeric = self._numeric(frame)
        if np.isnan(numeric).any():
            bad = [c for c, n in zip(self.numeric, np.isnan(numeric).sum(0), strict=True) if n]
            raise DataError(
                f"numeric input column(s) {bad} contain NaN/missing values. Fill them "
                "(e.g. `df[col].fillna(df[col].median())`) or turn them into categories."
            )
        if np.isinf(numeric).any():
            bad = [c for c, n in zip(self.numeric, np.isinf(numeric).sum(0), strict=True) if n]
            raise DataError(f"numeric input column(s) {bad} contain infinite values; replace "
                            "or drop those rows.")
        standardised = (numeric - np.array(self.mean)) / np.array(self.std)
        index = {c: {v: i + 1 for i, v in enumerate(self.vocab[c])} for c in self.categorical}
        categorical = np.array(
            [[index[c].get(str(v), 0) for v in frame[c].tolist()] for c in self.categorical],
            dtype=np.int64,
        ).T.reshape(len(frame), len(self.categorical))
        return {"numeric": torch.tensor(standardised, dtype=torch.float32),
                "categorical": torch.from_numpy(categorical)}
