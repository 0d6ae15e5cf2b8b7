"""How many CPU threads torch uses for a run when `train.threads` is null.

A small model does too little work per operation to share it between threads: on a shared
2-core machine two threads made each census step 30-40x slower than one, and on an idle one
a second thread gained nothing below about a million parameters (measured with a 4-layer
MLP, batch 128, `OMP_WAIT_POLICY=PASSIVE`; it gained 1.4x at 2M and 1.8x at 9M). So a model
under `SMALL_MODEL_PARAMETERS` runs on one thread and a larger one on torch's default.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SMALL_MODEL_PARAMETERS", "TORCH_DEFAULT_THREADS", "default_threads"]

#: Models with fewer parameters than this train on one intra-op thread by default.
SMALL_MODEL_PARAMETERS = 1_000_000
#: torch's thread count when polytask was imported, before any run changed it.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def default_threads(model: nn.Module) -> int:
    """One thread for a model under SMALL_MODEL_PARAMETERS parameters, else torch's default."""
    parameters = sum(p.numel() for p in model.parameters())
    return 1 if parameters < SMALL_MODEL_PARAMETERS else TORCH_DEFAULT_THREADS
