"""Run by tests/train/test_distributed.py, under torchrun or alone: train the config in
argv[1] into run dir argv[2] and save this process's final parameters as
argv[2]/rank<R>.safetensors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from polytask import Trainer, load_config


def main() -> None:
    config = load_config(json.loads(Path(sys.argv[1]).read_text()))
    run_dir = Path(sys.argv[2])
    trainer = Trainer(config, run_dir)
    trainer.fit()
    rank = int(os.environ.get("RANK", "0"))
    state = {k: v.detach().contiguous().clone() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(run_dir / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
