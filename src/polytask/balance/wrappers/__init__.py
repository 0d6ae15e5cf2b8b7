"""Wrappers that compose with a balancer, chosen by keywords of `polytask.balance.get`:

    get("mgda", representation=True)   # MGDA-UB: gradients w.r.t. the shared features
    get("nash_mtl", update_every=5)    # recompute the weights every 5 steps
    get("pcgrad", sparse=0.1)          # update only 10% of the shared parameter entries
    get("upgrad", sam_rho=0.05)        # per-task sharpness-aware gradients

One file per wrapper; each registers its keyword in `polytask.balance.base.WRAPPERS`.
"""

from polytask.registry import import_submodules

import_submodules(__name__)
