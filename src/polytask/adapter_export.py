"""Export of a run trained with a multi-task adapter (`model.adapter`, docs/adapters.md).

**hf**: the task's low-rank path is merged into the frozen base weights (W + ΔW, from
`Adapter.merged_delta(task)`), which leaves a plain transformers encoder (`merged_encoder`);
`polytask.export` then writes it like any hard-sharing run (the encoder + the head, checked
to give polytask's outputs to 1e-5). A method whose path cannot be merged (an
input-dependent router, a soft prompt) is refused by its `merged_delta` with a ConfigError
naming it.

**peft** (`PEFT_METHODS`): `OUT/base/` holds the frozen base encoder and its tokenizer, once;
`OUT/<task>/` holds the task's PEFT adapter (adapter_config.json, adapter_model.safetensors,
written by PEFT's own `save_pretrained`), the head (head.safetensors, head.json) and a model
card whose loader is `PEFT_LOADER`:

- `lora`: PEFT's LoRA, the run's own weights;
- `task_lora`: the task's LoRA (A_t, B_t) as a PEFT LoRA;
- `poly`, `mhr`: a PEFT Poly adapter (`n_splits` = MHR's heads) of one task: the skill
  inventory and the task's row of routing logits (forward with `task_ids` all 0);
- `mpt`: a PEFT multitask prompt tuning adapter of one task: the shared prompt and the
  task's u, v (forward with `task_ids` all 0; the prompt positions lead the output and are
  dropped before the head, as polytask does).

Every folder is reloaded with `peft.PeftModel.from_pretrained` before the export is kept,
and must give polytask's outputs to 1e-5.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from polytask.errors import ConfigError
from polytask.inference import LoadedRun
from polytask.models.adapters import Adapter
from polytask.models.adapters.lora import ADAPTER_NAME as LORA_ADAPTER_NAME
from polytask.models.backbones import HFEncoder
from polytask.train.results import write_json

#: Adapters that have a PEFT equivalent (`--format peft`).
PEFT_METHODS = ("lora", "task_lora", "poly", "mhr", "mpt")
#: The attribute of `HFEncoder` holding the transformers model; adapters attach to the
#: HFEncoder, so their layer names start with it.
ENCODER_PREFIX = "encoder."
#: PEFT's name for the one adapter of a folder (and of `lora`'s PEFT layers).
ADAPTER_NAME = LORA_ADAPTER_NAME

#: How to load a `--format peft` task folder with transformers and PEFT (README.md shows it).
PEFT_LOADER = '''import json
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = "{folder}"
base = AutoModel.from_pretrained(f"{{folder}}/../base")
model = PeftModel.from_pretrained(base, folder).eval()
tokenizer = AutoTokenizer.from_pretrained(f"{{folder}}/../base")
head = load_file(f"{{folder}}/head.safetensors")
info = json.load(open(f"{{folder}}/head.json"))


def hidden_states(batch):
    ids = torch.zeros(len(batch["input_ids"]), dtype=torch.long)  # the folder's one task
    if not info["prompt_tokens"]:  # lora, task_lora; poly and mhr take task_ids
        extra = {{"task_ids": ids}} if info["task_ids"] else {{}}
        return model(**batch, **extra).last_hidden_state
    # mpt: PEFT's feature-extraction forward does not pass task_ids to the prompt, so
    # prepend PEFT's prompt here, then drop its positions (as polytask does)
    prompt = model.get_prompt(batch_size=len(ids), task_ids=ids)
    embeds = model.get_base_model().get_input_embeddings()(batch["input_ids"])
    mask = batch["attention_mask"]
    hidden = model.get_base_model()(
        inputs_embeds=torch.cat([prompt.to(embeds.dtype), embeds], 1),
        attention_mask=torch.cat([mask.new_ones(len(ids), prompt.shape[1]), mask], 1),
    ).last_hidden_state
    return hidden[:, prompt.shape[1]:]


def logits(texts):
    batch = tokenizer(texts, truncation=True, max_length=info["max_length"],
                      padding="max_length", return_tensors="pt")
    with torch.no_grad():
        hidden = hidden_states(batch)
        if info["level"] == "token":
            features = hidden
        elif info["pooling"] == "cls":
            features = hidden[:, 0]
        else:  # mean over the real tokens
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return features @ head["weight"].T + head["bias"]


# classification: info["labels"][logits(texts).argmax(-1)]
# multilabel: labels whose torch.sigmoid(logits) > 0.5
# regression: logits * torch.tensor(info["std"]) + torch.tensor(info["mean"])
'''


def adapter_of(run: LoadedRun) -> Adapter | None:
    """The run's multi-task adapter, or None for a run without one."""
    return getattr(run.model, "adapter", None)


def _encoder_name(name: str) -> str:
    """A layer name of the HFEncoder (where adapters attach) as a name in its transformers
    model (what a plain transformers or PEFT model calls it)."""
    return name.removeprefix(ENCODER_PREFIX)


def _plain_state(run: LoadedRun, adapter: Adapter) -> dict[str, Tensor]:
    """The run encoder's state dict under a plain transformers model's names: each adapted
    layer's frozen `base_layer` weights back under the layer's own name, the adapter's
    parameters left out."""
    wrapped = [_encoder_name(name) for name in adapter.wrapped]
    state: dict[str, Tensor] = {}
    for key, value in run.model.backbone.encoder.state_dict().items():  # type: ignore[union-attr]
        owner = next((w for w in wrapped if key.startswith(f"{w}.")), None)
        if owner is None:
            state[key] = value.detach().clone()
        elif key.startswith(f"{owner}.base_layer."):
            state[owner + key[len(owner) + len(".base_layer"):]] = value.detach().clone()
    return state


def _plain_encoder(run: LoadedRun, adapter: Adapter,
                   deltas: Mapping[str, Tensor] | None) -> nn.Module:
    """A new transformers encoder of the run's class and config holding its base weights,
    plus `deltas` ({adapter weight name: ΔW}) when given; loaded strictly, so that no
    weight is left behind."""
    encoder = run.model.backbone.encoder  # type: ignore[union-attr]
    state = _plain_state(run, adapter)
    for name, delta in (deltas or {}).items():
        key = _encoder_name(name)
        state[key] = state[key] + delta.to(state[key].dtype)
    plain = type(encoder)(encoder.config)
    plain.load_state_dict(state)
    return plain.eval()


def base_encoder(run: LoadedRun) -> nn.Module:
    """The run's transformers encoder as it was before the adapter (the frozen base)."""
    adapter = adapter_of(run)
    encoder: nn.Module = run.model.backbone.encoder  # type: ignore[union-attr]
    return encoder if adapter is None else _plain_encoder(run, adapter, None)


def base_backbone(run: LoadedRun) -> HFEncoder:
    """A new backbone around `base_encoder(run)`, to which another adapter can attach."""
    return HFEncoder(base_encoder(run), run.model.backbone.pooling)  # type: ignore[union-attr]


def merged_deltas(run: LoadedRun, tasks: list[str]) -> dict[str, dict[str, Tensor]]:
    """Per task, {weight name: ΔW} of the task's low-rank path, computed for every task
    before anything is written: a method whose path cannot be merged fails here (its
    `merged_delta` raises a ConfigError naming it)."""
    adapter = adapter_of(run)
    assert adapter is not None
    return {task: adapter.merged_delta(task) for task in tasks}


def merged_encoder(run: LoadedRun, deltas: Mapping[str, Tensor]) -> nn.Module:
    """A plain transformers encoder: the run's base weights plus `deltas` (one task's)."""
    adapter = adapter_of(run)
    assert adapter is not None
    return _plain_encoder(run, adapter, deltas)


# -- peft ---------------------------------------------------------------------------------
def check_peft(run: LoadedRun) -> Adapter:
    """The run's adapter, if PEFT has an equivalent of it; else a ConfigError."""
    adapter = adapter_of(run)
    if adapter is None:
        raise ConfigError("--format peft: the run has no adapter (model.adapter), so there is "
                          "no PEFT adapter to write; use --format hf or polytask")
    if adapter.name not in PEFT_METHODS:
        raise ConfigError(
            f"--format peft: PEFT has no equivalent of the adapter {adapter.name!r} (it has one "
            f"for {', '.join(PEFT_METHODS)}); use --format hf (merged, where the method "
            "allows it) or --format polytask")
    return adapter


def _layer_names(adapter: Adapter) -> list[str]:
    return [_encoder_name(name) for name in adapter.wrapped]


def _lora(adapter: Adapter, index: int) -> tuple[Any, Callable[[Any], None]]:
    """PEFT LoRA config and the function filling its A, B: `lora`'s own PEFT layers, or
    `task_lora`'s pair of task `index`."""
    from peft import LoraConfig

    factors = {}
    for name, wrapper in adapter.wrapped.items():
        if adapter.name == "lora":
            pair = (wrapper.lora_A[ADAPTER_NAME].weight, wrapper.lora_B[ADAPTER_NAME].weight)
        else:
            pair = (wrapper.lora.lora_A[index], wrapper.lora.lora_B[index])
        factors[_encoder_name(name)] = pair
    config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                        target_modules=_layer_names(adapter), bias="none",
                        task_type="FEATURE_EXTRACTION")

    def fill(model: Any) -> None:
        for name, (a, b) in factors.items():
            layer = model.get_base_model().get_submodule(name)
            layer.lora_A[ADAPTER_NAME].weight.copy_(a)
            layer.lora_B[ADAPTER_NAME].weight.copy_(b)

    return config, fill


def _poly(adapter: Adapter, index: int) -> tuple[Any, Callable[[Any], None]]:
    """PEFT Poly config of one task (`n_tasks` 1) and the function filling its weights:
    polytask's inventory is PEFT's layout, with B scaled by alpha (PEFT scales by 1 / r,
    polytask by alpha / r); the task's routing logits become the router's one row."""
    from peft import PolyConfig

    config = PolyConfig(r=adapter.r, target_modules=_layer_names(adapter), n_tasks=1,
                        n_skills=adapter.skills, n_splits=adapter.heads,  # type: ignore[attr-defined]
                        poly_type="poly", task_type="FEATURE_EXTRACTION")

    def fill(model: Any) -> None:
        for name, wrapper in adapter.wrapped.items():
            layer = model.get_base_model().get_submodule(_encoder_name(name))
            layer.poly_lora_A[ADAPTER_NAME].copy_(wrapper.lora_A)
            layer.poly_lora_B[ADAPTER_NAME].copy_(wrapper.lora_B * adapter.alpha)
            layer.poly_router[ADAPTER_NAME].module_logits.copy_(
                wrapper.router.task_logits[index].unsqueeze(0))

    return config, fill


def _mpt(adapter: Adapter, index: int) -> tuple[Any, Callable[[Any], None]]:
    """PEFT multitask prompt tuning config of one task and the function filling its
    prompt: the shared prompt P* and the task's u, v."""
    from peft import MultitaskPromptTuningConfig
    from peft.tuners.prompt_tuning import PromptTuningInit

    prompt = adapter.prompt  # type: ignore[attr-defined]
    config = MultitaskPromptTuningConfig(
        num_virtual_tokens=adapter.num_virtual_tokens,  # type: ignore[attr-defined]
        num_tasks=1, num_ranks=adapter.r, prompt_tuning_init=PromptTuningInit.RANDOM,
        task_type="FEATURE_EXTRACTION")

    def fill(model: Any) -> None:
        target = model.prompt_encoder[ADAPTER_NAME]
        target.embedding.weight.copy_(prompt.embedding.weight)
        target.prefix_task_cols.copy_(prompt.prefix_task_cols[index:index + 1])
        target.prefix_task_rows.copy_(prompt.prefix_task_rows[index:index + 1])

    return config, fill


def peft_model(run: LoadedRun, adapter: Adapter, task: str, base: nn.Module) -> nn.Module:
    """A PEFT model over a copy of `base` holding `task`'s adapter, weights filled in."""
    from peft import get_peft_model

    builders = {"lora": _lora, "task_lora": _lora, "poly": _poly, "mhr": _poly, "mpt": _mpt}
    config, fill = builders[adapter.name](adapter, adapter.task_index(task))
    config.base_model_name_or_path = str(run.encoder.tokenizer.name_or_path)  # type: ignore[union-attr]
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        fill(model)
    return model.eval()


def _peft_info(run: LoadedRun, adapter: Adapter, task: str) -> dict[str, Any]:
    kind = run.kinds[task]
    info: dict[str, Any] = {
        "task": task, "kind": run.tasks[task].kind, "labels": kind.label_names,
        "level": "token" if kind.level == "token" else "sequence",
        "pooling": run.model.backbone.pooling,  # type: ignore[union-attr]
        "max_length": run.encoder.max_length,  # type: ignore[union-attr]
        "input_columns": run.tasks[task].input_columns, "adapter": adapter.name,
        "task_ids": adapter.name in ("poly", "mhr", "mpt"),
        "prompt_tokens": getattr(adapter, "num_virtual_tokens", 0) if adapter.name == "mpt"
        else 0}
    state = kind.state()
    if "mean" in state:
        info.update(mean=state["mean"], std=state["std"])
    return info


def _peft_hidden(model: Any, info: Mapping[str, Any], batch: Mapping[str, Tensor]) -> Tensor:
    """The last hidden state at the input's positions, as `PEFT_LOADER`'s `hidden_states`."""
    ids = torch.zeros(batch["input_ids"].shape[0], dtype=torch.long)
    if not info["prompt_tokens"]:
        extra = {"task_ids": ids} if info["task_ids"] else {}
        return model(**batch, **extra).last_hidden_state
    prompt = model.get_prompt(batch_size=len(ids), task_ids=ids)
    base = model.get_base_model()
    embeds = base.get_input_embeddings()(batch["input_ids"])
    mask = batch["attention_mask"]
    hidden = base(inputs_embeds=torch.cat([prompt.to(embeds.dtype), embeds], 1),
                  attention_mask=torch.cat([mask.new_ones(len(ids), prompt.shape[1]), mask], 1),
                  ).last_hidden_state
    return hidden[:, prompt.shape[1]:]


def peft_outputs(model: Any, info: Mapping[str, Any], head: nn.Linear,
                 batch: Mapping[str, Tensor]) -> Tensor:
    """What `PEFT_LOADER` computes, computed here (the check of a peft export)."""
    with torch.no_grad():
        hidden = _peft_hidden(model, info, batch)
        if info["level"] == "token":
            features = hidden
        elif info["pooling"] == "cls":
            features = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return features @ head.weight.T + head.bias


def write_peft_base(run: LoadedRun, folder: Path) -> nn.Module:
    """Write the frozen base encoder and the tokenizer into `folder`; return the encoder."""
    base = base_encoder(run)
    base.save_pretrained(folder)
    run.encoder.tokenizer.save_pretrained(folder)  # type: ignore[union-attr]
    return base


def export_peft_task(run: LoadedRun, adapter: Adapter, task: str, base: nn.Module,
                     folder: Path, card: str, batch: Mapping[str, Tensor]) -> Tensor:
    """Write `task`'s PEFT adapter folder, then reload it with PEFT (over the base written
    in `folder/../base`) and return its outputs on `batch`, for the caller to check."""
    from peft import PeftModel
    from transformers import AutoModel

    head: nn.Linear = run.model.heads[task]  # type: ignore[assignment]
    peft_model(run, adapter, task, base).save_pretrained(folder)
    save_file({"weight": head.weight.detach().contiguous(),
               "bias": head.bias.detach().contiguous()}, str(folder / "head.safetensors"))
    write_json(folder / "head.json", _peft_info(run, adapter, task))
    (folder / "README.md").write_text(card)
    reloaded = PeftModel.from_pretrained(AutoModel.from_pretrained(folder.parent / "base"),
                                         folder).eval()
    info = json.loads((folder / "head.json").read_text())
    return peft_outputs(reloaded, info, head, batch)
