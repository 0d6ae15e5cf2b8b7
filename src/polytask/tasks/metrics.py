"""Per-task metrics: pure functions of numpy arrays (or tag lists), no torch.

They live with the tasks because each task kind (`polytask.tasks.kinds`) names the metrics
it reports; `polytask.evaluate` imports them from here, never the other way round.

Each function returns a ``dict[str, float]`` keyed by metric name; `HIGHER_IS_BETTER` tells,
for every name any function here returns, which direction is better (used by delta-m% and
ranks, see `polytask.evaluate.delta`).

Conventions, chosen to match scikit-learn and seqeval so numbers compare with papers:

- An F1, precision or recall whose denominator is zero is 0.0 (scikit-learn's
  ``zero_division=0``, seqeval's default).
- Macro averages run over the classes that occur in the labels or the predictions; a class
  that occurs in neither (common in small evaluation sets) neither helps nor hurts.
- Pearson/Spearman of a constant prediction (or constant labels) is 0.0, not NaN.
- Empty inputs, mismatched shapes, NaNs and out-of-range labels raise ``ValueError``: a NaN
  metric silently poisons averages, so we refuse to produce one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

# scikit-learn and scipy.stats are imported inside the functions that use them: together they
# take about a second to import, and every `import polytask` reaches this module.

__all__ = [
    "HIGHER_IS_BETTER",
    "classification_metrics",
    "extract_entities",
    "generation_metrics",
    "higher_is_better",
    "multilabel_metrics",
    "regression_metrics",
    "token_classification_metrics",
]

#: Direction of every metric name returned by the functions in this module.
HIGHER_IS_BETTER: dict[str, bool] = {
    # classification
    "accuracy": True,
    "macro_f1": True,
    "mcc": True,
    "f1": True,
    "f1_accuracy": True,
    # multilabel
    "micro_f1": True,
    "subset_accuracy": True,
    # regression
    "pearson": True,
    "spearman": True,
    "pearson_spearman": True,
    "mse": False,
    "mae": False,
    # token classification
    "entity_f1": True,
    "entity_precision": True,
    "entity_recall": True,
    "token_accuracy": True,
    # extractive QA (tasks/kinds/extractive_qa.py; `f1` is listed above)
    "exact_match": True,
    # text generation (tasks/kinds/generation.py; `exact_match` is listed above)
    "rougeL": True,
    "bleu": True,
    "chrf": True,
    # dense prediction (segmentation, depth, normals; computed in their task kinds)
    "miou": True,
    "pixel_accuracy": True,
    "abs_err": False,
    "rel_err": False,
    "mean_angle": False,
    "median_angle": False,
    "within_11_25": True,
    "within_22_5": True,
    "within_30": True,
}


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better; ValueError naming valid metrics if unknown."""
    try:
        return HIGHER_IS_BETTER[metric]
    except KeyError:
        raise ValueError(
            f"unknown metric {metric!r}; valid metrics: {', '.join(sorted(HIGHER_IS_BETTER))}"
        ) from None


# --------------------------------------------------------------------------- helpers


def _check_same_shape(predictions: np.ndarray, labels: np.ndarray, what: str) -> None:
    if predictions.shape != labels.shape:
        raise ValueError(
            f"{what}: predictions have shape {predictions.shape} but labels have shape "
            f"{labels.shape}; pass one prediction per label"
        )
    if predictions.size == 0:
        raise ValueError(f"{what}: no examples (empty predictions and labels)")


def _as_int_array(values: np.ndarray, name: str, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what}: {name} must be integer class ids, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not (
        np.all(np.isfinite(array)) and np.all(array == np.round(array))
    ):
        raise ValueError(f"{what}: {name} must be integer class ids, found non-integers")
    return array.astype(np.int64)


# --------------------------------------------------------------------------- classification


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, num_labels: int
) -> dict[str, float]:
    """Single-label classification: accuracy, macro_f1, mcc, f1 and f1_accuracy.

    Args:
        predictions: (N,) predicted class ids in ``[0, num_labels)``.
        labels: (N,) true class ids in ``[0, num_labels)``.
        num_labels: number of classes of the task (used to validate the ids).

    ``macro_f1`` averages the per-class F1 over the classes present in `labels` or
    `predictions`. ``mcc`` is Matthews' correlation (multi-class form), 0.0 when undefined.
    ``f1`` is, for two classes, the F1 of class id 1 (the positive class, as scikit-learn's
    ``pos_label=1``: GLUE's MRPC/QQP F1), and for more classes the macro F1 (SuperGLUE's CB
    F1). ``f1_accuracy`` is the mean of ``f1`` and ``accuracy`` (GLUE's and SuperGLUE's score
    of MRPC, QQP and CB).
    """
    what = "classification_metrics"
    preds = _as_int_array(predictions, "predictions", what)
    gold = _as_int_array(labels, "labels", what)
    if preds.ndim != 1 or gold.ndim != 1:
        raise ValueError(
            f"{what}: expected 1-D arrays of class ids, got shapes {preds.shape} and "
            f"{gold.shape} (for 0/1 matrices use multilabel_metrics)"
        )
    _check_same_shape(preds, gold, what)
    if num_labels < 1:
        raise ValueError(f"{what}: num_labels must be >= 1, got {num_labels}")
    for name, array in (("predictions", preds), ("labels", gold)):
        bad = array[(array < 0) | (array >= num_labels)]
        if bad.size:
            raise ValueError(
                f"{what}: {name} contain class id {int(bad[0])}, outside [0, {num_labels}) "
                f"for num_labels={num_labels}"
            )
    from sklearn.metrics import f1_score, matthews_corrcoef

    present = np.union1d(preds, gold)
    macro_f1 = f1_score(gold, preds, labels=present, average="macro", zero_division=0)
    with warnings.catch_warnings():  # constant inputs: mcc is 0 by definition here
        warnings.simplefilter("ignore", RuntimeWarning)
        mcc = matthews_corrcoef(gold, preds)
    accuracy = float(np.mean(preds == gold))
    f1 = (float(f1_score(gold, preds, pos_label=1, average="binary", zero_division=0))
          if num_labels == 2 else float(macro_f1))
    return {
        "accuracy": accuracy,
        "macro_f1": float(macro_f1),
        "mcc": float(mcc),
        "f1": f1,
        "f1_accuracy": (f1 + accuracy) / 2,
    }


# --------------------------------------------------------------------------- multilabel


def multilabel_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Multi-label classification from (N, C) 0/1 matrices: micro_f1, macro_f1, subset_accuracy.

    ``macro_f1`` averages over the label columns with at least one positive in `labels` or
    `predictions` (as `classification_metrics` does over classes); if no column has any
    positive, both F1s are 0.0. ``subset_accuracy`` is the share of rows predicted exactly.
    """
    what = "multilabel_metrics"
    preds = _as_int_array(predictions, "predictions", what)
    gold = _as_int_array(labels, "labels", what)
    if preds.ndim != 2 or gold.ndim != 2:
        raise ValueError(
            f"{what}: expected (N, C) 0/1 matrices, got shapes {preds.shape} and {gold.shape}"
        )
    _check_same_shape(preds, gold, what)
    for name, array in (("predictions", preds), ("labels", gold)):
        if not np.all((array == 0) | (array == 1)):
            raise ValueError(f"{what}: {name} must contain only 0 and 1 (threshold scores first)")
    tp = np.sum((preds == 1) & (gold == 1), axis=0)
    fp = np.sum((preds == 1) & (gold == 0), axis=0)
    fn = np.sum((preds == 0) & (gold == 1), axis=0)
    denom = 2 * tp + fp + fn
    present = denom > 0  # columns with a positive in labels or predictions
    micro = 2 * tp.sum() / denom.sum() if denom.sum() > 0 else 0.0
    macro = float(np.mean(2 * tp[present] / denom[present])) if present.any() else 0.0
    return {
        "micro_f1": float(micro),
        "macro_f1": macro,
        "subset_accuracy": float(np.mean(np.all(preds == gold, axis=1))),
    }


# --------------------------------------------------------------------------- regression


def _correlation(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0  # undefined for constant input; 0 = "no linear/rank association"
    from scipy import stats

    test = stats.pearsonr if kind == "pearson" else stats.spearmanr
    value = test(x, y).statistic
    return float(value) if np.isfinite(value) else 0.0


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Regression: pearson, spearman, their mean pearson_spearman (GLUE's STS-B score), mse
    and mae, each averaged over the K outputs.

    Args:
        predictions: (N, K) or (N,) floats.
        labels: same shape as `predictions`.

    Pearson and Spearman are computed per output column and then averaged; a constant
    column (in predictions or labels) scores 0.0.
    """
    what = "regression_metrics"
    preds = np.asarray(predictions, dtype=np.float64)
    gold = np.asarray(labels, dtype=np.float64)
    if preds.ndim == 1:
        preds = preds[:, None]
    if gold.ndim == 1:
        gold = gold[:, None]
    if preds.ndim != 2 or gold.ndim != 2:
        raise ValueError(
            f"{what}: expected (N, K) or (N,) arrays, got shapes {np.shape(predictions)} and "
            f"{np.shape(labels)}"
        )
    _check_same_shape(preds, gold, what)
    for name, array in (("predictions", preds), ("labels", gold)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what}: {name} contain NaN or infinite values")
    outputs = range(preds.shape[1])
    errors = preds - gold
    pearson = [_correlation(preds[:, k], gold[:, k], "pearson") for k in outputs]
    spearman = [_correlation(preds[:, k], gold[:, k], "spearman") for k in outputs]
    return {
        "pearson": float(np.mean(pearson)),
        "spearman": float(np.mean(spearman)),
        "pearson_spearman": float((np.mean(pearson) + np.mean(spearman)) / 2),
        "mse": float(np.mean(np.mean(errors**2, axis=0))),
        "mae": float(np.mean(np.mean(np.abs(errors), axis=0))),
    }


# --------------------------------------------------------------------------- token classification

_PREFIXES = {"B", "I", "E", "S"}


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_'); 'B' -> ('B', '_') (seqeval's reading)."""
    if tag == "O":
        return "O", "_"
    prefix, _, type_ = tag.partition("-")
    if prefix not in _PREFIXES:
        raise ValueError(
            f"token_classification_metrics: tag {tag!r} is not 'O' nor B-/I-/E-/S- followed by a "
            "type (IOB1, IOB2, IOE and BIOES tags are accepted)"
        )
    return prefix, type_ or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != type_


def extract_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of one sentence as (type, first, last) token indices, inclusive.

    The lenient rules of seqeval's default mode: an entity starts at B- or S-, at an I-/E-
    after O, E- or S-, or at any tag whose type differs from the previous tag's; it ends
    before O, B- or S-, after E- or S-, or where the type changes. So IOB1, IOB2, IOE and
    BIOES sequences (and ill-formed ones such as ``O I-PER``) all decode.
    """
    entities: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "_", 0
    for i, raw in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(raw)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def token_classification_metrics(
    predictions: Sequence[Sequence[str]], labels: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Sequence labelling (NER-style): entity_f1/precision/recall and token_accuracy.

    Args:
        predictions: one list of tags per sentence, e.g. ``[["B-PER", "I-PER", "O"], ...]``.
        labels: the true tags, same sentence and token counts.

    An entity counts as correct only if its type and both boundaries match (seqeval's
    default, lenient decoding; see `extract_entities`). Micro-averaged over all entities.
    ``token_accuracy`` is the share of tokens whose tag is exactly right.
    """
    what = "token_classification_metrics"
    if len(predictions) != len(labels):
        raise ValueError(
            f"{what}: {len(predictions)} predicted sentences but {len(labels)} labelled ones"
        )
    n_tokens = n_right = 0
    n_pred = n_true = n_correct = 0
    for i, (pred_tags, true_tags) in enumerate(zip(predictions, labels, strict=True)):
        if isinstance(pred_tags, str) or isinstance(true_tags, str):
            raise ValueError(f"{what}: sentence {i} must be a list of tags, got a string")
        if len(pred_tags) != len(true_tags):
            raise ValueError(
                f"{what}: sentence {i} has {len(pred_tags)} predicted tags but "
                f"{len(true_tags)} labels"
            )
        n_tokens += len(true_tags)
        n_right += sum(p == t for p, t in zip(pred_tags, true_tags, strict=True))
        pred_entities = set(extract_entities(pred_tags))
        true_entities = set(extract_entities(true_tags))
        n_pred += len(pred_entities)
        n_true += len(true_entities)
        n_correct += len(pred_entities & true_entities)
    if n_tokens == 0:
        raise ValueError(f"{what}: no tokens (empty predictions and labels)")
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "entity_f1": float(f1),
        "entity_precision": float(precision),
        "entity_recall": float(recall),
        "token_accuracy": n_right / n_tokens,
    }


def _normalised(text: str) -> str:
    """`text` with surrounding whitespace stripped and inner runs of whitespace collapsed."""
    return " ".join(text.split())


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Generated text against one reference per example: exact_match, rougeL, bleu and chrf.

    ``exact_match`` is the share of predictions equal to their reference once whitespace is
    normalised (case kept). ``rougeL`` is the mean ROUGE-L F-measure of rouge-score (Lin
    2004; its default tokenizer, with Porter stemming), in [0, 1]. ``bleu`` and ``chrf`` are
    sacrebleu's corpus-level BLEU (Papineni et al. 2002) and chrF (Popović 2015), on their
    usual 0-100 scale.
    """
    what = "generation_metrics"
    if len(predictions) != len(references):
        raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} "
                         "references; pass one prediction per reference")
    if not references:
        raise ValueError(f"{what}: no examples (empty predictions and references)")
    import sacrebleu
    from rouge_score import rouge_scorer

    hypotheses = [_normalised(p) for p in predictions]
    gold = [_normalised(r) for r in references]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(hypotheses, gold, strict=True)]
    return {
        "exact_match": float(np.mean([p == r for p, r in zip(hypotheses, gold, strict=True)])),
        "rougeL": float(np.mean(rouge)),
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [gold]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [gold]).score),
    }
