"""The `polytask` command line."""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polytask import __version__
from polytask.affinity.run import method_options, run_affinity, sources_table, summary_table
from polytask.bench import bench_config, grouping_change_table, run_bench, run_grouping_bench
from polytask.config import load_config
from polytask.errors import DataError, PolytaskError
from polytask.evaluate.leaderboard import leaderboard_rows
from polytask.evaluate.report import write_report
from polytask.evaluate.table import print_results
from polytask.export import export_run
from polytask.inference import evaluate_run, load
from polytask.merge.regime import leaderboard_table, parse_options, run_merge
from polytask.methods import all_methods, method_record
from polytask.models.adapters.base import apply_preference
from polytask.pareto import PARETO_FILE, front_rows, parse_preference, trace_pareto
from polytask.process import is_main_process
from polytask.tasks.catalog.show import catalog_table, entry_yaml
from polytask.tasks.data import read_rows
from polytask.train.trainer import Trainer, train_baselines

app = typer.Typer(
    help="polytask: train one model on many tasks, measure it against single-task baselines.\n\n"
    "Start with `polytask train examples/quickstart.yaml`, then look at the run directory.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
out = Console()
err = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="A run config (YAML); see examples/.")]
#: The commands registered with `_command(hugging_face=False)`: they never load Hugging Face
#: datasets or models, so the global options leave those libraries unimported.
_LIGHT_COMMANDS: set[str] = set()

PreferenceOpt = Annotated[str | None, typer.Option(
    help="A palora run: the preference over its tasks, one non-negative weight per task in "
    "the run's task order (normalised to sum to 1), e.g. 0.3,0.7.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config value: --set train.lr=3e-4 --set balancer=pcgrad "
    "(repeatable; values are YAML).")]


def _third_party_output(verbose: bool) -> None:
    """The progress bars and info logs of datasets, transformers and the Hugging Face hub:
    shown with --verbose, silenced otherwise (polytask shows its own progress). Imported
    here, before the commands that may load them (not those in `_LIGHT_COMMANDS`): together
    they take over a second to import, which `--help`, `methods` and `report` do not pay."""
    import datasets
    import transformers.utils.logging as transformers_logging

    if verbose:
        datasets.enable_progress_bars()
        transformers_logging.enable_progress_bar()
        datasets.logging.set_verbosity_warning()
        transformers_logging.set_verbosity_warning()
    else:
        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()
        datasets.logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()


def _print_version(requested: bool) -> None:
    if requested:
        out.print(f"polytask {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show the progress bars and logs of datasets, "
        "transformers and the Hugging Face hub (silenced by default).")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the installed polytask version and exit.")] = False,
) -> None:
    del version  # handled by its callback before any command runs
    if ctx.invoked_subcommand not in _LIGHT_COMMANDS:
        _third_party_output(verbose)
    warnings.showwarning = _show_warning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A warning as one line on stderr (`warning: ...`), without the source line Python
    prints by default."""
    del category, filename, lineno, file, line
    err.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True, highlight=False)


def _fail(error: Exception) -> NoReturn:
    # escape: rich would take `[col_a, col_b]` or `df[col]` in a message for markup
    err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _reported(command: Callable[..., None]) -> Callable[..., None]:
    """Errors become one line on stderr and a non-zero exit, never a traceback: exit 2 for
    a problem with the user's input (PolytaskError), exit 1 for anything unexpected (set
    POLYTASK_DEBUG=1 to see its traceback)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except PolytaskError as error:
            _fail(error)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as error:
            if os.environ.get("POLYTASK_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] unexpected {type(error).__name__}: "
                      f"{escape(str(error))}\n"
                      "This input is not checked yet, or it is a bug: rerun with "
                      "POLYTASK_DEBUG=1 to see the traceback, and please report it.",
                      soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None

    return run


def _command(*args: Any, hugging_face: bool = True,
             **kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """`app.command`, with errors reported as messages (see `_reported`). `hugging_face`:
    the command may load Hugging Face datasets or models (a text backbone), whose progress
    bars and logs are set first; False for commands that never do, which then start fast."""

    def register(function: Callable[..., None]) -> Callable[..., None]:
        if not hugging_face:
            _LIGHT_COMMANDS.add(args[0] if args else function.__name__.replace("_", "-"))
        return app.command(*args, **kwargs)(_reported(function))

    return register


@_command()
def train(
    config: ConfigArg,
    run_dir: Annotated[Path | None, typer.Option(help="Where to write the run; default "
                                                 "runs/<config name or file stem>.")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --run-dir from its newest "
                                         "good checkpoint (from step 0 when it has none yet). "
                                         "Only train.max_steps, eval_every, patience, "
                                         "callbacks and progress may change.")] = False,
) -> None:
    """Train the tasks of CONFIG jointly; write config, metrics, checkpoints, model, results.

    Prints a table of multi-task vs single-task test results and Δm% (positive = better).
    """
    cfg = load_config(config, set_ or [])
    target = run_dir or Path("runs") / (cfg.name or config.stem)
    # refuses a finished, foreign or busy run dir, or a changed config on --resume, before
    # fit() trains (baselines: auto) or reads (cached) the single-task baselines
    trainer = Trainer(cfg, target, resume=resume, console=err, config_path=config)
    results = trainer.fit()
    if is_main_process():  # under torchrun, the first process reports
        print_results(results, out)
        out.print(f"run written to {target}")


@_command()
def baseline(config: ConfigArg, set_: SetOpt = None) -> None:
    """Train each task of CONFIG alone (same settings) and cache it for `train`'s Δm%."""
    values = train_baselines(load_config(config, set_ or []), err)
    for task, value in values.items():
        out.print(f"{task}: {value:.4f}" if value is not None else f"{task}: –")


@_command("eval")
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    split: Annotated[str, typer.Option(help="validation or test.")] = "test",
    allow_data_change: Annotated[bool, typer.Option(
        help="Evaluate even if the data files differ from those the run was trained on "
        "(each change is printed); by default that is refused.")] = False,
    preference: PreferenceOpt = None,
    pareto: Annotated[int | None, typer.Option(
        help="A palora run: evaluate it at K preference vectors spread over the simplex, "
        "print the front and write it to RUN_DIR/pareto.json (plotted by `polytask "
        "report`).", metavar="K")] = None,
) -> None:
    """Re-evaluate a finished run's model on a split; prints every metric of every task.

    The data is checked against the fingerprints the run recorded in splits.json, and
    carved splits are rebuilt from the recorded rows, so the same rows are scored."""
    if split not in ("validation", "test"):
        _fail(PolytaskError(f"--split: {split!r} is not a split; use validation or test"))
    if pareto is not None:
        if preference is not None:
            _fail(PolytaskError("--pareto traces many preferences: drop --preference"))
        _print_front(trace_pareto(run_dir, pareto, split, allow_data_change, err), run_dir)
        return
    metrics = evaluate_run(run_dir, split, allow_data_change=allow_data_change, console=err,
                           preference=None if preference is None
                           else parse_preference(preference))
    table = Table(title=f"{run_dir} · {split}")
    for column in ("task", "metric", "value"):
        table.add_column(column)
    for task, values in metrics.items():
        for metric, value in values.items():
            table.add_row(task, metric, f"{value:.4f}")
    out.print(table)


def _print_front(front: dict[str, Any], run_dir: Path) -> None:
    header, rows = front_rows(front)
    table = Table(title=f"{run_dir} · {front['split']} · Pareto front")
    for column in header:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(f"wrote {run_dir / PARETO_FILE}")


@_command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    input: Annotated[Path, typer.Option("--input", help="CSV/TSV/JSON/JSONL rows with the "
                                        "tasks' input columns.")],
    tasks: Annotated[str, typer.Option(
        "--tasks", "--task", help="Comma-separated task names, or all. --task NAME is the "
        "same for one task.")] = "all",
    proba: Annotated[bool, typer.Option(
        "--proba", help="Print each label's probability ({label: p}) instead of the "
        "predicted label; per word for token tasks; regression prints its value.")] = False,
    id_column: Annotated[str | None, typer.Option(
        "--id-column", help="An input column copied into every output line, beside the row "
        "index, to match predictions to rows.")] = None,
    preference: PreferenceOpt = None,
) -> None:
    """Print one JSON line per input row: {"row": index, [ID column,] task: prediction, ...}."""
    rows = read_rows(input, "--input")
    if id_column is not None and id_column not in rows.columns:
        raise DataError(f"--id-column: {str(input)!r} has no column {id_column!r}; its columns "
                        f"are {list(rows.columns)}")
    names = None if tasks == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    run = load(run_dir)
    if preference is not None:
        apply_preference(run.model.adapter, parse_preference(preference))
    predictions = run.predict(rows, names, proba=proba)
    carried = {id_column: rows[id_column].tolist()} if id_column is not None else {}
    for index, values in enumerate(predictions.to_dict(orient="records")):
        ids = {column: column_values[index] for column, column_values in carried.items()}
        sys.stdout.write(json.dumps({"row": index, **ids, **values}) + "\n")


@_command(hugging_face=False)
def methods(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List every registered method, in every family, with its paper."""
    infos = all_methods()
    if as_json:
        sys.stdout.write(json.dumps([method_record(i) for i in infos], indent=1) + "\n")
        return
    table = Table(title="polytask methods")
    for column in ("family", "name", "paper"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(info.family, info.name, info.paper)
    out.print(table)


tasks_app = typer.Typer(help="The task catalog: GLUE, SuperGLUE, SQuAD, CoNLL-2003 declared as "
                        "data; name them in a config's `tasks:` (e.g. glue/rte).",
                        no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
_LIGHT_COMMANDS.add("tasks")


@tasks_app.command("list")
@_reported
def tasks_list() -> None:
    """List the catalog's tasks with their kind, official metric and hub source."""
    out.print(catalog_table())


@tasks_app.command("show")
@_reported
def tasks_show(name: Annotated[str, typer.Argument(help="A catalog name, e.g. glue/rte.")],
               ) -> None:
    """Show one catalog entry and the task section it declares in a run."""
    out.print(entry_yaml(name), highlight=False, markup=False, soft_wrap=True)


@_command()
def bench(
    suite_or_config: Annotated[str, typer.Argument(
        help="A built-in suite (census, yeast, text) or a run config (YAML).")] = "census",
    balancers: Annotated[str, typer.Option(help="Comma-separated balancers.")] =
        "ew,uw,pcgrad,mgda,famo",
    architectures: Annotated[str, typer.Option(help="Comma-separated architectures.")] =
        "hard_sharing,mmoe",
    seeds: Annotated[int, typer.Option(help="Seeds per cell (train.seed, +1, ...).")] = 3,
    steps: Annotated[int | None, typer.Option(help="train.max_steps of every run "
                                              "(default: the config's).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder; default "
                                                 "runs/bench/<suite or config stem>.")] = None,
    set_: SetOpt = None,
    report: Annotated[bool, typer.Option(help="Write report.html for the bench.")] = True,
    grouping: Annotated[Path | None, typer.Option(
        help="A groups.json from `polytask affinity`: instead of the grid, train each group "
        "(one run per group per seed, the config's balancer and architecture), all tasks "
        "together and single-task, and compare them in one leaderboard.")] = None,
    grouping_method: Annotated[str | None, typer.Option(
        help="With --grouping: the affinity method(s) whose groups to train, comma-separated "
        "(default: every method in the file).")] = None,
    groups: Annotated[int | None, typer.Option(
        help="With --grouping: the number of groups k (default: the largest k in the "
        "file).")] = None,
) -> None:
    """Run a balancer x architecture x seed grid; write leaderboard.json/.md and a report.

    Finished cells are skipped and interrupted ones resume, so re-running continues the
    bench. Single-task baselines are reused from the cache (trained first when missing).
    With --grouping groups.json, the rows are strategies instead: the chosen groups, all
    tasks together, and single-task (Δm% and per-task change against single-task).
    """
    base = bench_config(suite_or_config, steps, set_ or [])
    stem = Path(suite_or_config).stem if suite_or_config.endswith((".yaml", ".yml")) \
        else suite_or_config
    target = out_dir or Path("runs") / "bench" / (f"{stem}-grouping" if grouping else stem)
    command = "polytask " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv[1:2] == ["bench"] else None
    if grouping is not None:
        outcome = run_grouping_bench(base, grouping, grouping_method, groups, seeds, target,
                                     console=err, source=suite_or_config, command=command,
                                     report=report)
    else:
        outcome = run_bench(base, balancers, architectures, seeds, target, console=err,
                            source=suite_or_config, command=command, report=report)
    header, rows = leaderboard_rows(outcome.leaderboard)
    if not out.is_terminal:  # piped: the Markdown table, unwrapped
        sys.stdout.write((target / "leaderboard.md").read_text() + "\n")
        for path in outcome.files.values():
            sys.stdout.write(f"wrote {path}\n")
        return
    table = Table(title=f"leaderboard · {suite_or_config} · {len(outcome.leaderboard['seeds'])} "
                        f"seed(s) · {base.train.max_steps} steps")
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if 0 < index < 3 else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    if grouping is not None:
        out.print(grouping_change_table(outcome.leaderboard))
    out.print("Δm%: positive = better than single-task (papers such as Nash-MTL print the "
              "negation). MR: mean rank over tasks, 1 = best.")
    for path in outcome.files.values():
        out.print(f"wrote {path}")


@_command(hugging_face=False)
def report(
    run_or_bench_dir: Annotated[Path, typer.Argument(help="A run directory (polytask train) "
                                                     "or a bench directory (polytask bench).")],
) -> None:
    """Write a self-contained report.html (figures embedded) and its PNGs into the directory."""
    path = write_report(run_or_bench_dir)
    out.print(f"wrote {path}")


@_command()
def merge(
    config: ConfigArg,
    methods: Annotated[str | None, typer.Option(
        help="Comma-separated merging methods (default: every one; `polytask methods` lists "
        "them).")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Output folder; default runs/merge/<config name or file stem>.")] = None,
    inputs: Annotated[str, typer.Option(
        help="Split whose unlabelled inputs adamerging and surgery learn from: validation, "
        "or test (as their papers do; the leaderboard labels those rows).")] = "validation",
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Fix a method's hyperparameter instead of searching it: "
        "--option adamerging.steps=50 (repeatable; values are YAML).")] = None,
    references: Annotated[bool, typer.Option(
        help="Also train the `mix` (joint training) and `frozen` (frozen backbone) "
        "reference rows.")] = True,
    frozen_lr: Annotated[float, typer.Option(
        help="Learning rate of the `frozen` reference's heads (a head on frozen features "
        "learns at a far higher rate than fine-tuning; the other training settings are the "
        "config's).")] = 1e-3,
    set_: SetOpt = None,
) -> None:
    """Fine-tune an expert per task, merge their backbones by each method, compare with joint.

    The experts are the single-task baselines (cached).

    Each task keeps its own expert's head. Hyperparameters are chosen on the validation split
    from each method's small grid, then the chosen merge is scored on test and written as a
    run directory (OUT/merged/<method>) that eval, predict, report and export accept. Prints
    the leaderboard (experts, each method, mix, frozen; Δm% against the experts) and writes
    results.json, leaderboard.md/json and report.html into OUT.
    """
    cfg = load_config(config, set_ or [])
    target = out_dir or Path("runs") / "merge" / (cfg.name or config.stem)
    outcome = run_merge(cfg, methods, target, inputs, console=err, references=references,
                        options=parse_options(option or []), frozen_lr=frozen_lr)
    out.print(leaderboard_table(outcome.results))
    out.print(outcome.results["leaderboard"]["note"], highlight=False)
    for path in outcome.files.values():
        out.print(f"wrote {path}")


@_command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (trained, merged "
                                            "or a baseline).")],
    out_dir: Annotated[Path, typer.Option("--out", help="A new (or empty) folder to write.")],
    task: Annotated[str | None, typer.Option(help="Export this task only.")] = None,
    format_: Annotated[str, typer.Option(
        "--format", help="hf: one folder per task that transformers loads without polytask "
        "(an adapter run's task path merged into the weights); polytask: one multi-head folder "
        "for polytask.load; peft: an adapter run as PEFT adapter folders (lora, task_lora, "
        "poly, mhr, mpt).")] = "hf",
) -> None:
    """Export a run's model: per task for Hugging Face transformers, or as one polytask model.

    hf needs a Hugging Face backbone on hard sharing with one linear layer per head; a token
    task becomes an AutoModelForTokenClassification, a sentence-level task the encoder plus
    its head in safetensors with the loader in README.md. Every export is checked to give
    polytask's outputs (to 1e-5) before it is written; each folder has a model card."""
    for path in export_run(run_dir, out_dir, task, format_):
        out.print(f"wrote {path}")


@_command()
def affinity(
    suite_or_config: Annotated[str, typer.Argument(
        help="A built-in suite (planted, yeast, census, ...) or a run config (YAML).")],
    methods: Annotated[str, typer.Option(
        help="Comma-separated affinity methods: grad_cosine, tag, taskweb, data_map "
        "(`polytask methods` lists them with their papers).")] = "grad_cosine,tag",
    groups: Annotated[int, typer.Option(
        help="Search the best partition into k = 1..GROUPS groups.")] = 3,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Output folder; default affinity/<suite or config stem>.")] = None,
    target: Annotated[str | None, typer.Option(
        help="Also rank the other tasks as source (auxiliary) tasks for this task; writes "
        "sources-TARGET.json.")] = None,
    overlap: Annotated[bool, typer.Option(
        help="Let a task sit in several groups, each task served by its best group (TAG's "
        "selection) instead of exactly one group each.")] = False,
    steps: Annotated[int | None, typer.Option(
        help="train.max_steps of the measuring runs (default: the config's).")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="A method option: --option tag.every=10 --option "
        "taskweb.mode=joint (repeatable; values are YAML).")] = None,
    set_: SetOpt = None,
) -> None:
    """Which tasks help each other: measure inter-task affinity, choose groups, rank sources.

    Each method measures a T x T matrix (row = source task, column = target; higher = better
    together) from short training runs of the config; the best partition into 1..GROUPS
    groups maximises the total within-group affinity (exact search up to 12 tasks). Writes
    into OUT: affinity.json, groups.json (with the adjusted Rand index when the suite plants
    its groups), configs/<method>-k<k>-group<i>.yaml (ready for `polytask train`) and
    report.html. Validate a grouping with `polytask bench CONFIG --grouping OUT/groups.json`.

    Example: polytask affinity planted --methods grad_cosine,tag --groups 3
    """
    base = bench_config(suite_or_config, steps, set_ or [])
    stem = Path(suite_or_config).stem if suite_or_config.endswith((".yaml", ".yml")) \
        else suite_or_config
    names = [m.strip() for m in methods.split(",") if m.strip()]
    outcome = run_affinity(base, names, groups, out_dir or Path("affinity") / stem, name=stem,
                           options=method_options(option or [], names), overlap=overlap,
                           target=target, console=err)
    out.print(summary_table(outcome, groups))
    if outcome.target is not None:
        out.print(sources_table(outcome))
    for path in outcome.files.values():
        out.print(f"wrote {path}")


def main() -> None:
    app()
