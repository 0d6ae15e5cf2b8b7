"""Model-merging benchmarks.

``memory``: the peak memory and wall time of a streaming data-free merge. It writes N experts
with the parameter shapes of MiniLM-L6 (BERT, 6 layers, hidden 384: ~22.7M parameters,
random values) as safetensors files in a temporary folder, merges them with
`TensorwiseMerger.merge_files` in a fresh subprocess per run, and prints the wall time and
the peak RSS (``resource.getrusage``) next to N × the model size and to one model + N copies
of its largest tensor (what streaming should need).

    python benchmarks/merging.py memory [--experts 10] [--methods ties,task_arithmetic]

``e2e``: the merge regime end to end on the offline text suite (MiniLM-L6 fine-tuned per
task, max_length 64, subsampled): per-task test accuracy and Δm% against the experts for the
experts, joint training (mix), every merging method and frozen features
(`polytask.merge.regime.run_merge`; the data-driven methods get the fixed `E2E_OPTIONS`).

    python benchmarks/merging.py e2e [--out runs/bench-merge] [--train-size 160] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

#: MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2): vocabulary, positions, width, depth.
VOCAB, POSITIONS, HIDDEN, INTERMEDIATE, LAYERS = 30522, 512, 384, 1536, 6
MIB = 2**20


def minilm_shapes() -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of a BERT encoder the size of MiniLM-L6."""
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (VOCAB, HIDDEN),
        "embeddings.position_embeddings.weight": (POSITIONS, HIDDEN),
        "embeddings.token_type_embeddings.weight": (2, HIDDEN),
        "embeddings.LayerNorm.weight": (HIDDEN,), "embeddings.LayerNorm.bias": (HIDDEN,),
        "pooler.dense.weight": (HIDDEN, HIDDEN), "pooler.dense.bias": (HIDDEN,),
    }
    for i in range(LAYERS):
        layer = f"encoder.layer.{i}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[f"{layer}.{name}.weight"] = (HIDDEN, HIDDEN)
            shapes[f"{layer}.{name}.bias"] = (HIDDEN,)
        shapes[f"{layer}.intermediate.dense.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{layer}.intermediate.dense.bias"] = (INTERMEDIATE,)
        shapes[f"{layer}.output.dense.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[f"{layer}.output.dense.bias"] = (HIDDEN,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{layer}.{norm}.weight"] = (HIDDEN,)
            shapes[f"{layer}.{norm}.bias"] = (HIDDEN,)
    return shapes


def write_experts(folder: Path, count: int) -> tuple[Path, dict[str, Path]]:
    """A random base and `count` experts (base + small noise), one safetensors file each."""
    generator = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=generator) * 0.05 for k, s in minilm_shapes().items()}
    save_file(base, folder / "base.safetensors")
    experts = {}
    for i in range(count):
        state = {k: v + torch.randn(v.shape, generator=generator) * 0.01 for k, v in base.items()}
        experts[f"task{i}"] = folder / f"task{i}.safetensors"
        save_file(state, experts[f"task{i}"])
        del state
    return folder / "base.safetensors", experts


def run_one(method: str, folder: Path, count: int) -> dict[str, float]:
    """Merge in this process (the subprocess side); return the wall time and RSS figures."""
    import resource

    from polytask import merge

    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    experts = {f"task{i}": folder / f"task{i}.safetensors" for i in range(count)}
    start = time.perf_counter()
    merge.get(method).merge_files(folder / "base.safetensors", experts,
                                  folder / f"merged-{method}.safetensors")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": peak}


def memory(args: argparse.Namespace) -> None:
    shapes = minilm_shapes()
    sizes = {k: 4 * torch.Size(s).numel() / MIB for k, s in shapes.items()}  # float32
    model, largest = sum(sizes.values()), max(sizes.values())
    parameters = sum(torch.Size(s).numel() for s in shapes.values())
    print(f"MiniLM-L6-sized experts: {parameters / 1e6:.1f}M parameters, {model:.0f} MiB each "
          f"(float32); largest tensor {largest:.0f} MiB; N = {args.experts}")
    print(f"N x model size = {args.experts * model:.0f} MiB; "
          f"one model + N x largest tensor = {model + args.experts * largest:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_experts(folder, args.experts)
        print(f"(wrote the experts in {time.perf_counter() - start:.1f} s)\n")
        print(f"{'method':<16} {'wall s':>7} {'RSS after imports':>18} {'peak RSS':>9} "
              f"{'peak - imports':>15}")
        for method in args.methods.split(","):
            result = subprocess.run(
                [sys.executable, __file__, "_run", method, str(folder), str(args.experts)],
                capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"{method}: the merge failed:\n{result.stderr}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{method:<16} {row['seconds']:>7.1f} {row['rss_before_mib']:>14.0f} MiB "
                  f"{row['peak_rss_mib']:>5.0f} MiB "
                  f"{row['peak_rss_mib'] - row['rss_before_mib']:>11.0f} MiB")


#: Fixed hyperparameters that keep the data-driven methods within the time budget on CPU.
E2E_OPTIONS = {"adamerging": {"steps": 40}, "surgery": {"steps": 300},
               "fisher": {"examples": 64}, "regmean": {"examples": 256}}


def e2e(args: argparse.Namespace) -> None:
    from rich.console import Console

    from polytask.config import load_config
    from polytask.merge.regime import leaderboard_markdown, run_merge

    started = time.perf_counter()
    config = load_config({
        "name": "merge-text",
        "suite": {"name": "text", "train_size": args.train_size, "eval_size": args.eval_size},
        "model": {"backbone": {"type": "hf", "name": "minilm-l6", "max_length": 64}},
        "train": {"max_steps": args.steps, "batch_size": 16, "lr": 5e-5,
                  "eval_every": max(1, args.steps // 3), "progress": False, "callbacks": []},
        "baselines_dir": str(args.out / "baselines")})
    chosen = None if args.methods is None else args.methods.split(",")
    options = {m: o for m, o in E2E_OPTIONS.items() if chosen is None or m in chosen}
    outcome = run_merge(config, chosen, args.out / "merge", rows=128,
                        console=Console(stderr=True), options=options)
    print(leaderboard_markdown(outcome.results))
    print(f"text suite: {args.train_size} train / {args.eval_size} validation / "
          f"{args.eval_size} test rows per task; MiniLM-L6, max_length 64, {args.steps} steps, "
          f"batch 16, lr 5e-5; fixed options {options}; "
          f"{time.perf_counter() - started:.0f}s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("memory", help="peak RSS and time of a streaming merge")
    measure.add_argument("--experts", type=int, default=10)
    measure.add_argument("--methods", default="ties,task_arithmetic,dare")
    whole = commands.add_parser("e2e", help="the merge regime on the text suite")
    whole.add_argument("--out", type=Path, default=Path("runs/bench-merge"))
    whole.add_argument("--train-size", type=int, default=160)
    whole.add_argument("--eval-size", type=int, default=80)
    whole.add_argument("--steps", type=int, default=60)
    whole.add_argument("--methods", default=None, help="comma-separated (default: all)")
    child = commands.add_parser("_run", help=argparse.SUPPRESS)  # one measurement, isolated
    child.add_argument("method")
    child.add_argument("folder", type=Path)
    child.add_argument("count", type=int)
    args = parser.parse_args()
    if args.command == "memory":
        memory(args)
    elif args.command == "e2e":
        e2e(args)
    else:
        print(json.dumps(run_one(args.method, args.folder, args.count)))


if __name__ == "__main__":
    main()
