"""`polytask export RUN_DIR --out DIR [--task NAME] [--format hf|polytask]`: a finished run
(trained jointly, merged, a single-task baseline) as folders other tools load.

**hf** (one folder per task, `OUT/<task>/`; a Hugging Face backbone on hard sharing, each head
one `nn.Linear`), loadable with `transformers` alone, no polytask and no `trust_remote_code`:

- a token task (`token_classification`) becomes an `AutoModelForTokenClassification` (the
  encoder, then one linear classifier on every token: exactly polytask's model);
- a sentence-level task (classification, multilabel, regression) reads features pooled by
  polytask (the mean over tokens, or the first token's hidden state, with no extra layer).
  No standard transformers head does that: BERT-like `...ForSequenceClassification` heads add
  a dense + tanh "pooler" layer. So the folder holds the encoder as an `AutoModel`, the head in
  `head.safetensors` (`weight`, `bias`) and `head.json` (pooling, labels, how to decode), and
  its README.md gives the dozen lines that load them (`LOADER` below).

Each folder also holds the tokenizer and a model card (README.md) with the task's test
metrics and the run's Δm%. Before anything is written, the exported model is run on a few
sentences and must give polytask's outputs to 1e-5. MLP backbones, sharing architectures with
task-specific layers (MMoE towers...) and heads that are not one linear layer (`head_hidden`,
representation surgery) have no such equivalent: a clear error says to use `--format
polytask`.

**polytask**: one multi-head folder (`OUT/model/` with model.safetensors and meta.json as a
run writes them, and the fine-tuned encoder with its tokenizer in `OUT/model/backbone/`) that
`polytask.load(OUT)` reloads for prediction, without the original backbone files.

**peft** (a run trained with `model.adapter` of a method PEFT has): `OUT/base/` (the frozen
base encoder and its tokenizer) and one PEFT adapter folder per task, `OUT/<task>/`, that
`peft.PeftModel.from_pretrained(base, folder)` loads, with the head beside it
(`polytask.adapter_export`). For an adapter run, **hf** first merges the task's low-rank path
into the base weights (where the method allows it), so the folder is a plain encoder again.

Bad input writes nothing: everything is checked, and the export is built in a temporary
folder beside OUT that is renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from polytask import adapter_export
from polytask.config import ModelConfig
from polytask.errors import CheckpointError, ConfigError
from polytask.inference import LoadedRun, load
from polytask.merge.merged_run import MERGE_KEY, restore_heads
from polytask.models.backbones import HFEncoder
from polytask.models.model import MultiTaskModel
from polytask.models.sharing.hard_sharing import HardSharing
from polytask.pipeline import build_model
from polytask.train.checkpoint import save_weights
from polytask.train.results import write_json

FORMATS = ("hf", "polytask", "peft")
#: Largest difference allowed between the exported model's outputs and polytask's.
TOLERANCE = 1e-5
#: Sentences the exported model is checked on.
CHECK_TEXTS = ["polytask checks the exported model on these sentences.",
               "A second one, longer, with punctuation: does it match? Yes."]

#: How to load a sentence-level export with transformers alone (README.md shows it).
LOADER = '''import json
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = "{folder}"
encoder = AutoModel.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
head = load_file(f"{{folder}}/head.safetensors")
info = json.load(open(f"{{folder}}/head.json"))


def logits(texts):
    batch = tokenizer(texts, truncation=True, max_length=info["max_length"],
                      padding="max_length", return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
        if info["pooling"] == "cls":
            features = hidden[:, 0]
        else:  # mean over the real tokens
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return features @ head["weight"].T + head["bias"]


# classification: info["labels"][logits(texts).argmax(-1)]
# multilabel: labels whose torch.sigmoid(logits) > 0.5
# regression: logits * torch.tensor(info["std"]) + torch.tensor(info["mean"])
'''

TOKEN_LOADER = '''import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

folder = "{folder}"
model = AutoModelForTokenClassification.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
words = ["Alice", "went", "to", "Paris"]
batch = tokenizer(words, is_split_into_words=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    ids = model(**batch).logits.argmax(-1)[0]
# polytask tags each word by its first sub-word token:
first = {{}}
for position, word in enumerate(batch.word_ids(0)):
    if word is not None and word not in first:
        first[word] = position
tags = [model.config.id2label[int(ids[first[w]])] for w in range(len(words))]
'''


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not a format; use {' or '.join(FORMATS)}")


def check_out(out: Path) -> None:
    """OUT must be new or an empty folder (an export never mixes with other files)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new one "
                          "(nothing was written)")


def _tasks(run: LoadedRun, task: str | None) -> list[str]:
    if task is None:
        return list(run.tasks)
    if task not in run.tasks:
        raise ConfigError(f"--task: the run has no task {task!r}; its tasks are "
                          f"{list(run.tasks)}")
    return [task]


def _results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


# -- hf -----------------------------------------------------------------------------------
def check_hf(run: LoadedRun, tasks: Sequence[str], fmt: str = "hf") -> None:
    """Refuse what has no exact transformers equivalent (see the module docstring)."""
    model = run.model
    hint = "; use --format polytask (polytask.load reloads it)"
    if not isinstance(model.backbone, HFEncoder):
        raise ConfigError(f"--format {fmt}: the run's backbone is not a Hugging Face encoder "
                          f"(an MLP over table columns has no transformers model){hint}")
    if not isinstance(model.architecture, HardSharing) or any(
            True for _ in model.architecture.parameters()):
        raise ConfigError(f"--format {fmt}: the run's sharing architecture "
                          f"({type(model.architecture).__name__}) puts layers of its own between "
                          f"the encoder and the heads, which no transformers model has{hint}")
    for task in tasks:
        if not isinstance(model.heads[task], nn.Linear):
            raise ConfigError(
                f"--format {fmt}: the head of task {task!r} is not one linear layer "
                f"({type(model.heads[task]).__name__}: model.head_hidden, or a representation "
                f"surgery module), which no standard transformers head matches{hint}")


def _check_inputs(run: LoadedRun, task: str) -> dict[str, Tensor]:
    tokenizer = run.encoder.tokenizer  # type: ignore[union-attr]
    if run.kinds[task].level == "token":
        words = [text.split() for text in CHECK_TEXTS]
        batch = tokenizer(words, is_split_into_words=True, truncation=True, padding=True,
                          max_length=run.encoder.max_length, return_tensors="pt")  # type: ignore[union-attr]
    else:
        batch = tokenizer(CHECK_TEXTS, truncation=True, padding="max_length",
                          max_length=run.encoder.max_length, return_tensors="pt")  # type: ignore[union-attr]
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                       "token_type_ids")}


def _polytask_outputs(run: LoadedRun, task: str, batch: Mapping[str, Tensor]) -> Tensor:
    run.model.eval()
    with torch.no_grad():
        return run.model({task: dict(batch)}).outputs[task]


def _compare(task: str, ours: Tensor, theirs: Tensor, fmt: str = "hf") -> None:
    gap = float((ours - theirs).abs().max())
    if not gap <= TOLERANCE:
        raise ConfigError(f"--format {fmt}: the exported model of task {task!r} does not reproduce "
                          f"polytask's outputs (largest difference {gap:.2e} > {TOLERANCE}); "
                          "use --format polytask (nothing was written)")


def _token_model(run: LoadedRun, task: str, encoder: nn.Module) -> nn.Module:
    """An `AutoModelForTokenClassification` holding `encoder` and the task's head."""
    from transformers import AutoModelForTokenClassification

    head: nn.Linear = run.model.heads[task]  # type: ignore[assignment]
    labels = run.kinds[task].label_names or []
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    model = AutoModelForTokenClassification.from_config(config)
    missing, _ = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
    classifier = getattr(model, "classifier", None)
    if missing or not isinstance(classifier, nn.Linear) or \
            classifier.weight.shape != head.weight.shape:
        raise ConfigError(f"--format hf: {type(model).__name__} does not have the shape of "
                          f"polytask's token model for task {task!r}; use --format polytask")
    with torch.no_grad():
        classifier.weight.copy_(head.weight)
        classifier.bias.copy_(head.bias)
    return model.eval()


def _head_info(run: LoadedRun, task: str) -> dict[str, Any]:
    kind = run.kinds[task]
    info: dict[str, Any] = {
        "task": task, "kind": run.tasks[task].kind, "labels": kind.label_names,
        "pooling": run.model.backbone.pooling,  # type: ignore[union-attr]
        "max_length": run.encoder.max_length,  # type: ignore[union-attr]
        "input_columns": run.tasks[task].input_columns}
    state = kind.state()
    if "mean" in state:
        info.update(mean=state["mean"], std=state["std"])
    return info


def _sentence_outputs(run: LoadedRun, task: str, batch: Mapping[str, Tensor],
                      encoder: nn.Module) -> Tensor:
    """What `LOADER` computes with `encoder`, computed here (the check of a sentence-level
    export)."""
    head: nn.Linear = run.model.heads[task]  # type: ignore[assignment]
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
        if run.model.backbone.pooling == "cls":  # type: ignore[union-attr]
            features = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return features @ head.weight.T + head.bias


def export_hf_task(run: LoadedRun, task: str, folder: Path, card: str,
                   encoder: nn.Module | None = None) -> None:
    """Write task `task` of `run` as a transformers folder (checked against polytask first).
    `encoder`: the transformers encoder to write (an adapter run's, merged for the task);
    default the run's own."""
    if encoder is None:
        encoder = run.model.backbone.encoder  # type: ignore[union-attr]
    batch = _check_inputs(run, task)
    ours = _polytask_outputs(run, task, batch)
    tokenizer = run.encoder.tokenizer  # type: ignore[union-attr]
    if run.kinds[task].level == "token":
        model = _token_model(run, task, encoder)
        with torch.no_grad():
            _compare(task, ours, model(**batch).logits)
        model.save_pretrained(folder)
    else:
        _compare(task, ours, _sentence_outputs(run, task, batch, encoder))
        encoder.save_pretrained(folder)
        head: nn.Linear = run.model.heads[task]  # type: ignore[assignment]
        save_file({"weight": head.weight.detach().contiguous(),
                   "bias": head.bias.detach().contiguous()}, str(folder / "head.safetensors"))
        write_json(folder / "head.json", _head_info(run, task))
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(card)


# -- the model card -----------------------------------------------------------------------
def model_card(run_dir: Path, run: LoadedRun, task: str, fmt: str,
               results: Mapping[str, Any]) -> str:
    """README.md of an exported task: what it predicts, its test metrics, the run's Δm%, how
    it was made (a merge record when merged) and how to load it."""
    info = (results.get("tasks") or {}).get(task) or {}
    lines = [f"# {task}", "", f"Exported by `polytask export` from the run `{run_dir.name}`.",
             "", f"- kind: {run.tasks[task].kind}",
             f"- labels: {run.kinds[task].label_names}",
             f"- inputs: {run.tasks[task].input_columns}"]
    spec = getattr(run.model.backbone, "pooling", None)
    if spec is not None:
        lines.append(f"- encoder pooling: {spec}; max_length {run.encoder.max_length}")  # type: ignore[union-attr]
    lines += ["", "## Test metrics", ""]
    if info:
        lines += ["| metric | value |", "| :--- | ---: |",
                  *[f"| {m} | {v:.4f} |" for m, v in info.get("metrics", {}).items()], ""]
        baseline, change = info.get("baseline"), info.get("change_pct")
        if baseline is not None:
            lines.append(f"Primary metric {info['metric']}: {info['value']:.4f} against "
                         f"{baseline:.4f} for the single-task baseline ({change:+.2f}%).")
    else:
        lines.append("The run has no results.json: no test metrics recorded.")
    delta = results.get("delta_m")
    lines += ["", f"Δm% of the run over all its tasks: "
              f"{'–' if delta is None else f'{delta:+.2f}%'} (mean relative change of the "
              "primary test metric against the single-task baselines, positive = better)."]
    merge = results.get(MERGE_KEY)
    if merge:
        lines += ["", f"Merged with `{merge['method']}` ({merge['hyperparameters']}, chosen on "
                  f"{merge['chosen_on']}) from one fine-tuned expert per task."]
    lines += ["", "## Load it", ""]
    if fmt == "polytask":
        lines += ["```python", "import polytask", "", "model = polytask.load(\"PATH\")",
                  "model.predict(rows)  # one column per task", "```"]
    elif fmt == "peft":
        lines += ["With transformers and PEFT (the base encoder is in `../base`; the head, "
                  "which pools as polytask does, is a separate file):", "", "```python",
                  adapter_export.PEFT_LOADER.format(folder="PATH").rstrip(), "```"]
    elif run.kinds[task].level == "token":
        lines += ["With transformers alone:", "", "```python",
                  TOKEN_LOADER.format(folder="PATH").rstrip(), "```"]
    else:
        lines += ["With transformers alone (no standard transformers head pools as polytask "
                  "does, so the head is a separate file):", "", "```python",
                  LOADER.format(folder="PATH").rstrip(), "```"]
    return "\n".join(lines) + "\n"


# -- polytask -----------------------------------------------------------------------------
def _subset_model(run: LoadedRun, meta: Mapping[str, Any], tasks: Sequence[str],
                  weights: Mapping[str, Tensor]) -> tuple[MultiTaskModel, dict[str, Tensor]]:
    """The run's model with only `tasks`' heads, and its weights."""
    kept = {k: v for k, v in weights.items()
            if not k.startswith("heads.") or any(k.startswith(f"heads.{t}.") for t in tasks)}
    settings = ModelConfig.model_validate(meta["config"]["model"])
    backbone = (run.model.backbone if adapter_export.adapter_of(run) is None
                else adapter_export.base_backbone(run))  # (the subset attaches its own)
    model = build_model(settings, [run.tasks[t] for t in tasks],
                        {t: run.kinds[t] for t in tasks}, backbone)
    restore_heads(model, meta.get(MERGE_KEY, {}), kept)
    try:
        model.load_state_dict(kept)
    except CheckpointError:  # an adapter's weights record its task count
        adapter = meta["config"]["model"]["adapter"]["name"]
        raise ConfigError(f"--task: the run's adapter ({adapter}) is saved for all its "
                          "tasks, so one task cannot be taken out of a "
                          "polytask export; omit --task, or export the task with --format hf "
                          "or peft") from None
    except RuntimeError:
        raise ConfigError(f"--task: the run's sharing architecture "
                          f"({meta['config']['model']['architecture']['name']}) has parts "
                          "built for every task, so one task cannot be taken out of it; export "
                          "all tasks (omit --task)") from None
    return model, kept


def export_polytask(run_dir: Path, run: LoadedRun, tasks: Sequence[str], folder: Path) -> None:
    """One multi-head folder that `polytask.load(folder)` reloads."""
    meta = json.loads((run_dir / "model" / "meta.json").read_text())
    weights = run.model.state_dict()
    if list(tasks) != list(run.tasks):
        _, weights = _subset_model(run, meta, tasks, weights)
        meta = {**meta, "tasks": [t for t in meta["tasks"] if t["name"] in tasks],
                "kinds": {t: s for t, s in meta["kinds"].items() if t in tasks}}
    directory = folder / "model"
    if isinstance(run.model.backbone, HFEncoder):  # before any adapter (the run re-adds it)
        adapter_export.base_encoder(run).save_pretrained(directory / "backbone")
        run.encoder.tokenizer.save_pretrained(directory / "backbone")  # type: ignore[union-attr]
        meta = {**meta, "backbone": {**meta["backbone"], "name": "backbone"}}
    save_weights(dict(weights), directory / "model.safetensors")
    write_json(directory / "meta.json", meta)


# -- peft ---------------------------------------------------------------------------------
def check_peft_names(run: LoadedRun, tasks: Sequence[str]) -> None:
    """A PEFT equivalent of the run's adapter exists, and no task is called `base`."""
    adapter_export.check_peft(run)
    if "base" in tasks:
        raise ConfigError("--format peft: a task named 'base' would share its folder with the "
                          "base encoder (OUT/base); export the other tasks with --task, or use "
                          "--format polytask")


def export_peft(run: LoadedRun, tasks: Sequence[str], folder: Path,
                cards: Mapping[str, str]) -> None:
    """`folder/base` (the frozen encoder) and one PEFT adapter folder per task, each reloaded
    with PEFT and checked to give polytask's outputs to `TOLERANCE`."""
    adapter = adapter_export.check_peft(run)
    base = adapter_export.write_peft_base(run, folder / "base")
    for name in tasks:
        (folder / name).mkdir()
        batch = _check_inputs(run, name)
        theirs = adapter_export.export_peft_task(run, adapter, name, base, folder / name,
                                                 cards[name], batch)
        _compare(name, _polytask_outputs(run, name, batch), theirs, "peft")


# -- the command ---------------------------------------------------------------------------
def export_run(run_dir: str | Path, out: str | Path, task: str | None = None,
               fmt: str = "hf") -> list[Path]:
    """Export a finished run (see the module docstring); returns the folders written."""
    run_dir, out = Path(run_dir), Path(out)
    check_format(fmt)
    check_out(out)
    run = load(run_dir)
    tasks = _tasks(run, task)
    deltas: dict[str, dict[str, Tensor]] = {}  # an adapter run's ΔW, per task
    if fmt != "polytask":
        check_hf(run, tasks, fmt)
    if fmt == "peft":
        check_peft_names(run, tasks)
    elif fmt == "hf" and adapter_export.adapter_of(run) is not None:
        deltas = adapter_export.merged_deltas(run, tasks)
    results = _results(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "polytask":
            export_polytask(run_dir, run, tasks, staging)
            (staging / "README.md").write_text(
                "\n\n".join(model_card(run_dir, run, t, fmt, results) for t in tasks))
        elif fmt == "peft":
            export_peft(run, tasks, staging, {
                name: model_card(run_dir, run, name, fmt, results) for name in tasks})
        else:
            for name in tasks:
                (staging / name).mkdir()
                merged = (adapter_export.merged_encoder(run, deltas[name]) if deltas
                          else None)
                export_hf_task(run, name, staging / name,
                               model_card(run_dir, run, name, fmt, results), merged)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if fmt == "polytask":
        return [out]
    return [out / name for name in (["base", *tasks] if fmt == "peft" else tasks)]
