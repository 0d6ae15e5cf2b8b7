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
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from polytask.errors import ConfigError, DataError
from polytask.files import cache_dir, writing

Encoded = dict[str, Tensor]
#: Per-token tensors (padded to max_length), trimmed to the longest sequence of a batch.
SEQUENCE_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "word_index"})


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
    with writing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    return tensors


def collate(encoded: Encoded, indices: Tensor) -> Encoded:
    """The rows `indices` (a 1-D long tensor) of every tensor; padded token tensors are
    trimmed to the batch's longest sequence (their last dimension: B x L, or B x C x L for
    one sequence per choice)."""
    batch = {k: v.index_select(0, indices) for k, v in encoded.items()}
    if "attention_mask" in batch:
        length = int(batch["attention_mask"].sum(dim=-1).max().clamp(min=1))
        batch = {k: v[..., :length] if k in SEQUENCE_KEYS else v for k, v in batch.items()}
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
        if words and len(columns) > 1:
            raise DataError(
                f"a token task tags the words of one column of word lists, got {columns}; "
                "text pairs are for sentence-level kinds (classification, multilabel, "
                "regression)."
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


#: A text column is a numeric column with stray values when more than this share of its
#: values parse as numbers (e.g. 'n/a' or '?' among measurements).
MOSTLY_NUMERIC = 0.5


def _holds_numbers(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _numbers_with_strays(values: pd.Series) -> bool:
    """Most values of a text column parse as numbers, but not all: a numeric column with a
    few stray values, which must not silently turn it into categories."""
    present = values.dropna()
    if present.empty or _holds_numbers(values) or pd.api.types.is_bool_dtype(values):
        return False
    try:
        share = float(pd.to_numeric(present, errors="coerce").notna().mean())
    except (TypeError, ValueError):  # cells that are lists or other objects
        return False
    return MOSTLY_NUMERIC < share < 1


class TabularInputs:
    """Numeric columns standardised with train statistics; other columns are categorical,
    indexed by a train vocabulary (index 0 = a value unseen in train).

    Missing numeric values are filled per column (`impute`: median, mean or constant) with
    statistics of the train split, optionally with a 0/1 "was missing" input per imputed
    column; without a strategy, a missing value is an error. `constant` fills in
    `impute_value`. Columns in `categorical` are categories even when they hold numbers."""

    def __init__(self, impute: str | dict[str, str] | None = None,
                 impute_value: float = 0.0, missing_indicator: bool = False,
                 categorical: Sequence[str] = ()) -> None:
        self.impute_setting = impute
        self.impute_value = impute_value
        self.missing_indicator = missing_indicator
        self.declared_categorical = list(categorical)
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.mean: list[float] = []
        self.std: list[float] = []
        self.vocab: dict[str, list[str]] = {}
        self.impute: dict[str, str] = {}  # numeric column -> strategy, resolved by `fit`
        self.fill: dict[str, float] = {}  # numeric column -> the value filled in

    def fit(self, train: pd.DataFrame, columns: list[str]) -> None:
        self._check_named_columns(columns)
        self.numeric = [c for c in columns if c not in self.declared_categorical
                        and (_holds_numbers(train[c]) or _numbers_with_strays(train[c]))]
        self.categorical = [c for c in columns if c not in self.numeric]
        self.impute = self._strategies()
        values = self._floats(train).replace([np.inf, -np.inf], np.nan)  # `encode` reports inf
        self.fill = self._fill_values(values)
        filled = values.fillna(self.fill)
        self.mean = filled.mean().fillna(0.0).tolist()
        self.std = filled.std(ddof=0).replace(0.0, 1.0).fillna(1.0).tolist()
        self.vocab = {c: sorted({str(v) for v in train[c].tolist()}) for c in self.categorical}

    def _check_named_columns(self, columns: list[str]) -> None:
        named = {"categorical": self.declared_categorical,
                 "impute": list(self.impute_setting) if isinstance(self.impute_setting, dict)
                 else []}
        for field, names in named.items():
            unknown = [c for c in names if c not in columns]
            if unknown:
                raise ConfigError(f"model.backbone.{field}: {unknown} are not input columns; "
                                  f"the tasks read {columns}")

    def _strategies(self) -> dict[str, str]:
        setting = self.impute_setting
        if setting is None:
            return {}
        if isinstance(setting, str):
            return dict.fromkeys(self.numeric, setting)
        categories = [c for c in setting if c not in self.numeric]
        if categories:
            raise ConfigError(f"model.backbone.impute: {categories} are categorical columns, "
                              "where a missing value is a category of its own; impute numeric "
                              "columns only")
        return {c: setting[c] for c in self.numeric if c in setting}

    def _floats(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The numeric columns as float64, with values that are not numbers as NaN."""
        return frame[self.numeric].apply(pd.to_numeric, errors="coerce").astype("float64")

    def _fill_values(self, train: pd.DataFrame) -> dict[str, float]:
        fill = {}
        for column, strategy in self.impute.items():
            if strategy == "constant":
                fill[column] = self.impute_value
                continue
            statistic = float(getattr(train[column], strategy)())
            if np.isnan(statistic):
                raise DataError(
                    f"numeric input column {column!r} has no values in the train split, so "
                    f"`impute: {strategy}` has nothing to compute; use `impute: constant` "
                    "with `impute_value`, or drop the column from `input`")
            fill[column] = statistic
        return fill

    @property
    def numeric_width(self) -> int:
        """Numeric inputs the backbone reads: the columns, then the missing indicators."""
        return len(self.numeric) + (len(self.impute) if self.missing_indicator else 0)

    def state(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical, "mean": self.mean,
                "std": self.std, "vocab": self.vocab, "impute": self.impute,
                "fill": self.fill, "missing_indicator": self.missing_indicator}

    def load_state(self, state: dict[str, Any]) -> None:
        self.numeric, self.categorical = state["numeric"], state["categorical"]
        self.mean, self.std, self.vocab = state["mean"], state["std"], state["vocab"]
        # runs saved before imputation existed have none
        self.impute, self.fill = state.get("impute", {}), state.get("fill", {})
        self.missing_indicator = state.get("missing_indicator", False)

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        """The numeric columns as float64, naming the column, row and value that is not a
        number."""
        try:
            return frame[self.numeric].astype("float64").to_numpy()
        except (TypeError, ValueError):
            for column in self.numeric:
                converted = pd.to_numeric(frame[column], errors="coerce")
                bad = frame[column][converted.isna() & frame[column].notna()]
                if len(bad):
                    raise DataError(
                        f"column {column!r} is numeric but row {bad.index[0]} holds "
                        f"{bad.iloc[0]!r}, which is not a number; fix the value, declare it "
                        f"missing (`missing_values: [{str(bad.iloc[0])!r}]` in the data "
                        "section of a CSV file, or None in a table), or list the column under "
                        "`model.backbone.categorical`."
                    ) from None
            raise

    def _check_missing(self, frame: pd.DataFrame, missing: np.ndarray) -> None:
        """Missing values in a column without an imputation strategy are an error."""
        imputed = np.array([c in self.impute for c in self.numeric], dtype=bool)
        unfilled = missing & ~imputed
        if not unfilled.any():
            return
        bad = [c for c, n in zip(self.numeric, unfilled.sum(0), strict=True) if n]
        first = int(np.flatnonzero(unfilled[:, self.numeric.index(bad[0])])[0])
        raise DataError(
            f"numeric input column(s) {bad} hold NaN/missing values (column {bad[0]!r}, row "
            f"{frame.index[first]} first). Set `model.backbone.impute: median` (or mean, or "
            "constant with `impute_value`; per column: {column: median}) to fill them with "
            "statistics of the train split, saved with the model; or fill them in the data."
        )

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
        missing = np.isnan(numeric)
        self._check_missing(frame, missing)
        if np.isinf(numeric).any():
            bad = [c for c, n in zip(self.numeric, np.isinf(numeric).sum(0), strict=True) if n]
            raise DataError(f"numeric input column(s) {bad} contain infinite values; replace "
                            "or drop those rows.")
        fill = np.array([self.fill.get(c, np.nan) for c in self.numeric])
        filled = np.where(missing, fill, numeric)
        standardised = (filled - np.array(self.mean)) / np.array(self.std)
        if self.missing_indicator:
            was_missing = missing[:, [self.numeric.index(c) for c in self.impute]]
            standardised = np.concatenate([standardised, was_missing], axis=1)
        index = {c: {v: i + 1 for i, v in enumerate(self.vocab[c])} for c in self.categorical}
        categorical = np.array(
            [[index[c].get(str(v), 0) for v in frame[c].tolist()] for c in self.categorical],
            dtype=np.int64,
        ).T.reshape(len(frame), len(self.categorical))
        return {"numeric": torch.tensor(standardised, dtype=torch.float32),
                "categorical": torch.from_numpy(categorical)}
