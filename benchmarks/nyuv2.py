"""NYUv2 with the Nash-MTL protocol: SegNet (split) or MTAN, 200 epochs, for a GPU user.

Nash-MTL (Navon et al. 2022; code: experiments/nyuv2/trainer.py), also FAMO and CAGrad:
the preprocessed MTAN NYUv2 folder (795 train / 654 val images, 288 x 384), batch size 2,
Adam at lr 1e-4 halved after 100 epochs (StepLR(100, 0.5)), 200 epochs, augmentation on,
the val folder as the test set. Here: AdamW with weight decay 0 (= Adam), no warmup, a
constant rate halved at mid-run by `HalveAtMidRun`, and the flip augmentation of
`model.backbone.image.augment` (the papers also zoom crops by 1.0 / 1.2 / 1.5, which
polytask's augmentation does not do yet). Metrics are pooled over the whole split (see the
dense kinds), where Nash-MTL averages per test batch of 2 images.

Prints, per balancer, the 9 numbers of the papers' NYUv2 table and Δm% in the papers'
sign convention: Δm = (1/9) Σ_k (-1)^{h_k} (M_k - B_k) / B_k x 100, h_k = 1 when higher
is better, against the single-task numbers the papers use (CAGrad's STL row), so
NEGATIVE = BETTER (polytask's own reports print the opposite sign).

    python benchmarks/nyuv2.py --data /data/nyuv2 [--model mtan|segnet]
        [--balancers ew,pcgrad,nash_mtl,famo] [--seed 0] [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from polytask import Trainer, load_config
from polytask.train.callbacks import Callback, TrainerControl, TrainerState

TRAIN_IMAGES = 795
EPOCHS = 200
BATCH_SIZE = 2
#: The papers' NYUv2 columns: (task, metric, label, higher is better).
COLUMNS = [("segmentation", "miou", "mIoU", True), ("segmentation", "pixel_accuracy",
                                                    "Pix Acc", True),
           ("depth", "abs_err", "Abs Err", False), ("depth", "rel_err", "Rel Err", False),
           ("normals", "mean_angle", "Mean", False), ("normals", "median_angle", "Median",
                                                      False),
           ("normals", "within_11_25", "11.25", True), ("normals", "within_22_5", "22.5", True),
           ("normals", "within_30", "30", True)]
#: Single-task (STL) results the papers compute Δm against (CAGrad; Nash-MTL's `BASE`).
STL = [0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915]


class HalveAtMidRun(Callback):
    """StepLR(step_size = half the run, gamma = 0.5): halves the learning rate once, at
    the middle step (the scheduler's base rates, so a resumed run keeps it)."""

    def __init__(self, steps: int) -> None:
        self.middle = steps // 2
        self.trainer: Trainer | None = None  # set once the trainer exists

    def on_step_begin(self, state: TrainerState, control: TrainerControl) -> None:
        del control
        if state.step == self.middle and self.trainer is not None:
            scheduler = self.trainer.scheduler
            scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
            for group, lr in zip(self.trainer.optimizer.param_groups,
                                 scheduler.get_last_lr(), strict=True):
                group["lr"] = lr * 0.5


def delta_m_paper(values: list[float]) -> float:
    """Δm% in the papers' sign convention (negative = better than STL)."""
    changes = [(v - b) / b * (-1 if higher else 1)
               for v, b, (_, _, _, higher) in zip(values, STL, COLUMNS, strict=True)]
    return 100.0 * sum(changes) / len(changes)


def run_config(data: Path, model: str, balancer: str, seed: int, steps: int) -> Any:
    return load_config({
        "suite": {"name": "nyuv2", "path": str(data)},
        "model": {"architecture": "mtan" if model == "mtan" else "hard_sharing",
                  "backbone": {"type": "segnet", "width": 64,
                               "image": {"augment": {"flip": True}}}},
        "balancer": balancer,
        "train": {"max_steps": steps, "batch_size": BATCH_SIZE, "eval_batch_size": BATCH_SIZE,
                  "lr": 1e-4, "optimizer": "adamw", "weight_decay": 0.0, "warmup_ratio": 0.0,
                  "scheduler": "constant", "grad_clip": None, "eval_every": steps,
                  "seed": seed, "progress": False},
    })


def train_one(data: Path, model: str, balancer: str, seed: int, steps: int,
              out: Path) -> list[float]:
    halve = HalveAtMidRun(steps)
    trainer = Trainer(run_config(data, model, balancer, seed, steps), out / f"{model}-{balancer}",
                      callbacks=[halve])
    halve.trainer = trainer
    results = trainer.fit()
    return [results["tasks"][task]["metrics"][metric] for task, metric, _, _ in COLUMNS]


def table(rows: dict[str, list[float]], model: str) -> str:
    header = f"{'Method (' + model + ')':<22}" + "".join(f"{c[2]:>9}" for c in COLUMNS) + \
        f"{'Δm% ↓':>9}"
    lines = [header, "-" * len(header),
             f"{'STL (CAGrad)':<22}" + "".join(f"{v:>9.4f}" for v in STL) + f"{0.0:>9.2f}"]
    lines += [f"{name:<22}" + "".join(f"{v:>9.4f}" for v in values)
              + f"{delta_m_paper(values):>9.2f}" for name, values in rows.items()]
    lines.append("Δm%: papers' sign (negative = better than STL); shares are fractions.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="the preprocessed NYUv2 folder (train/ and val/)")
    parser.add_argument("--model", choices=["mtan", "segnet"], default="mtan")
    parser.add_argument("--balancers", default="ew,pcgrad,nash_mtl,famo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=EPOCHS * TRAIN_IMAGES // BATCH_SIZE,
                        help="optimizer steps (default: 200 epochs of 795 images at batch 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/nyuv2"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = {name: train_one(args.data, args.model, name, args.seed, args.steps, args.out)
            for name in args.balancers.split(",")}
    if args.json is not None:
        args.json.write_text(json.dumps({"model": args.model, "rows": rows, "stl": STL}))
    text = table(rows, args.model)
    print(text)
    return text


if __name__ == "__main__":
    main()
