"""Small files in the Hugging Face hub's column layout of each catalog dataset (nested answers,
integer class ids, -1 labels on hidden test splits), written by the tests: the catalog's
declarations read them exactly as they would read the hub's rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = Callable[[int, bool], dict[str, Any]]  # (index, labels hidden) -> a row


def _pair(first: str, second: str, classes: int) -> Row:
    def row(i: int, hidden: bool) -> dict[str, Any]:
        return {first: f"the first text {i}", second: f"a second text {i % 3}",
                "label": -1 if hidden else i % classes, "idx": i}
    return row


def _single(classes: int) -> Row:
    return lambda i, hidden: {"sentence": f"a sentence {i}",
                              "label": -1 if hidden else i % classes, "idx": i}


def _stsb(i: int, hidden: bool) -> dict[str, Any]:
    return {"sentence1": f"a cat {i}", "sentence2": f"a dog {i}",
            "label": -1.0 if hidden else float(i % 6) * 0.8, "idx": i}


def _copa(i: int, hidden: bool) -> dict[str, Any]:
    return {"premise": f"the glass fell {i}", "choice1": "it broke", "choice2": "it sang",
            "question": ["cause", "effect"][i % 2], "idx": i, "label": -1 if hidden else i % 2}


def _squad(unanswerable: bool) -> Row:
    def row(i: int, hidden: bool) -> dict[str, Any]:
        del hidden
        context = f"the movie was good and the plot was great {i}"
        answers: dict[str, list[Any]] = {"text": ["good", "good"], "answer_start": [14, 14]}
        if unanswerable and i % 4 == 3:  # SQuAD 2.0: no answer is an empty answer list
            answers = {"text": [], "answer_start": []}
        return {"id": str(i), "title": "t", "context": context,
                "question": f"how was the movie {i}", "answers": answers}
    return row


def _conll(i: int, hidden: bool) -> dict[str, Any]:
    del hidden
    return {"id": str(i), "tokens": ["the", "movie", "news", "sport"],
            "pos_tags": [1, 2, 3, 4], "chunk_tags": [0, 0, 0, 0],
            "ner_tags": [0, 3, 4, i % 9]}


#: Per catalog entry: its row maker, its dataset splits and which of them hide their labels.
LAYOUTS: dict[str, tuple[Row, list[str], list[str]]] = {
    "glue/cola": (_single(2), ["train", "validation", "test"], ["test"]),
    "glue/sst2": (_single(2), ["train", "validation", "test"], ["test"]),
    "glue/mrpc": (_pair("sentence1", "sentence2", 2), ["train", "validation", "test"], ["test"]),
    "glue/qqp": (_pair("question1", "question2", 2), ["train", "validation", "test"], ["test"]),
    "glue/stsb": (_stsb, ["train", "validation", "test"], ["test"]),
    "glue/mnli": (_pair("premise", "hypothesis", 3),
                  ["train", "validation_matched", "validation_mismatched", "test_matched",
                   "test_mismatched"], ["test_matched", "test_mismatched"]),
    "glue/qnli": (_pair("question", "sentence", 2), ["train", "validation", "test"], ["test"]),
    "glue/rte": (_pair("sentence1", "sentence2", 2), ["train", "validation", "test"], ["test"]),
    "glue/wnli": (_pair("sentence1", "sentence2", 2), ["train", "validation", "test"], ["test"]),
    "superglue/boolq": (_pair("question", "passage", 2), ["train", "validation", "test"],
                        ["test"]),
    "superglue/cb": (_pair("premise", "hypothesis", 3), ["train", "validation", "test"],
                     ["test"]),
    "superglue/copa": (_copa, ["train", "validation", "test"], ["test"]),
    "superglue/rte": (_pair("premise", "hypothesis", 2), ["train", "validation", "test"],
                      ["test"]),
    "squad": (_squad(False), ["train", "validation"], []),
    "squad_v2": (_squad(True), ["train", "validation"], []),
    "conll2003": (_conll, ["train", "validation", "test"], []),
}


def write_hub_files(name: str, folder: Path, rows: int = 24) -> dict[str, str]:
    """JSONL files of entry `name`'s dataset, one per split: `data_files` for the catalog."""
    make, splits, hidden = LAYOUTS[name]
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in splits:
        path = folder / f"{name.replace('/', '_')}_{split}.jsonl"
        count = rows if split == "train" else max(4, rows // 3)
        path.write_text("".join(json.dumps(make(i, split in hidden)) + "\n"
                                for i in range(count)))
        files[split] = str(path)
    return files
