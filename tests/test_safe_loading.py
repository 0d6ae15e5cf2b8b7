"""Safe loading: weights only as safetensors, `torch.load` only with `weights_only=True`, no
code evaluated from a config, and hub code run only when the config says
`trust_remote_code: true`.

Two kinds of checks: a scan of polytask's own source (AST, so multi-line calls and import
aliases are seen), and behaviour: loaders are monkeypatched to record the keywords polytask
passes, and booby-trapped files must not run their payload.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import polytask
from polytask.cli import app
from polytask.config import load_config
from polytask.errors import CheckpointError, ConfigError
from polytask.models.spec import BackboneSpec
from polytask.tasks.data import load_source
from polytask.tasks.spec import DataSpec
from polytask.train import checkpoint

SOURCE = Path(polytask.__file__).parent
runner = CliRunner()

# ------------------------------------------------------------------------- source scan

#: Calls that can run code hidden in data (or in a config string). Qualified names, after
#: resolving import aliases (`import pickle as p; p.load(...)` is `pickle.load`).
UNSAFE_CALLS = {
    "eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec",
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "cloudpickle.load",
    "cloudpickle.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
    "pandas.read_pickle", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
    "yaml.full_load_all", "torch.jit.load", "torch.package.PackageImporter",
}

#: Known, reviewed exceptions: (path under src/polytask, qualified call) -> why it is safe.
ALLOWED = {
    ("train/checkpoint.py", "torch.save"): (
        "checkpoint state.pt (optimizer/scheduler/RNG state, no weights); read back with "
        "torch.load(weights_only=True)"),
}


def _imports(tree: ast.AST) -> dict[str, str]:
    """Local name -> the module or object it stands for."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _qualified(func: ast.AST, imports: dict[str, str]) -> str | None:
    dotted = _dotted(func)
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    head = imports.get(head, head)
    head = {"pd": "pandas", "np": "numpy"}.get(head, head)
    return f"{head}.{rest}" if rest else head


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _safe_yaml_loader(node: ast.expr | None, module: str | None) -> bool:
    """`Loader=` names yaml.SafeLoader/CSafeLoader or a subclass of it."""
    name = _dotted(node) if node is not None else None
    if name is None:
        return False
    if name.split(".")[-1] in {"SafeLoader", "CSafeLoader"}:
        return True
    if module is None or "." in name:
        return False
    loader = getattr(importlib.import_module(module), name, None)
    return isinstance(loader, type) and issubclass(loader, yaml.SafeLoader)


def scan(code: str, module: str | None = None) -> list[tuple[int, str, str]]:
    """(line, qualified call, problem) for every unsafe loading call in `code`."""
    tree = ast.parse(code)
    imports = _imports(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualified(node.func, imports)
        if name is None:
            continue
        if name in UNSAFE_CALLS:
            found.append((node.lineno, name, "can run code from the data it loads"))
        elif name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            found.append((node.lineno, name, "torch.load without weights_only=True"))
        elif name in {"yaml.load", "yaml.load_all"} and not _safe_yaml_loader(
                _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None),
                module):
            found.append((node.lineno, name, "yaml.load without a SafeLoader"))
        elif name == "numpy.load" and _is_true(_keyword(node, "allow_pickle")):
            found.append((node.lineno, name, "numpy.load(allow_pickle=True)"))
        elif name == "torch.save":
            found.append((node.lineno, name, "weights must be saved as safetensors"))
        if _is_true(_keyword(node, "trust_remote_code")):
            found.append((node.lineno, name, "trust_remote_code=True hard-coded; it must "
                                             "come from the config"))
        if name.endswith("save_pretrained") and isinstance(
                _keyword(node, "safe_serialization"), ast.Constant) and not _keyword(
                node, "safe_serialization").value:  # type: ignore[union-attr]
            found.append((node.lineno, name, "save_pretrained(safe_serialization=False)"))
    return found


def _source_files() -> Iterator[tuple[str, str, str]]:
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        module = "polytask." + relative.removesuffix(".py").replace("/", ".").removesuffix(
            ".__init__")
        yield relative, module, path.read_text()


def test_source_has_no_unsafe_loading() -> None:
    problems, allowed_seen = [], set()
    for relative, module, code in _source_files():
        for line, name, problem in scan(code, module):
            if (relative, name) in ALLOWED:
                allowed_seen.add((relative, name))
                continue
            problems.append(f"src/polytask/{relative}:{line}: {name}: {problem}")
    assert not problems, "unsafe loading in the source:\n" + "\n".join(problems)
    stale = set(ALLOWED) - allowed_seen
    assert not stale, f"ALLOWED lists calls the source no longer makes; remove them: {stale}"


def test_every_torch_load_in_the_source_is_weights_only() -> None:
    """The positive side of the scan: the loads that exist pass weights_only=True."""
    loads = []
    for relative, _, code in _source_files():
        tree = ast.parse(code)
        imports = _imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _qualified(node.func, imports) == "torch.load":
                loads.append((relative, _is_true(_keyword(node, "weights_only"))))
    assert loads, "expected the checkpoint loader to use torch.load"
    assert all(ok for _, ok in loads), loads


def test_the_scanner_catches_what_it_should() -> None:
    bad = '''
import pickle as pk, torch, yaml, numpy as np, pandas as pd
from pickle import loads
from torch import load as tload
pk.load(open("x", "rb"))
loads(b"")
torch.load("a.pt")
tload("a.pt", map_location="cpu")
torch.load("a.pt",
           weights_only=False)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
np.load("a.npy", allow_pickle=True)
pd.read_pickle("a.pkl")
eval(config["expr"])
exec(code)
AutoModel.from_pretrained(name, trust_remote_code=True)
torch.save(model.state_dict(), "w.pt")
model.save_pretrained(out, safe_serialization=False)
'''
    names = [name for _, name, _ in scan(bad)]
    assert names.count("pickle.load") == 1 and "pickle.loads" in names
    assert names.count("torch.load") == 3
    assert names.count("yaml.load") == 2 and "yaml.unsafe_load" in names
    assert {"numpy.load", "pandas.read_pickle", "eval", "exec", "torch.save"} <= set(names)
    assert any("trust_remote_code" in p for *_, p in scan(bad))
    assert any("safe_serialization" in p for *_, p in scan(bad))
    good = '''
import torch, yaml
from safetensors.torch import load_file
torch.load(path, weights_only=True, map_location="cpu")
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
model.eval()
re.compile("x")
AutoModel.from_pretrained(name, trust_remote_code=spec.trust_remote_code)
load_file(path)
'''
    assert scan(good) == []


# ------------------------------------------------------------- configs are data, not code


@pytest.mark.parametrize("payload", [
    "!!python/object/apply:os.mkdir [{marker}]",
    "!!python/object/new:os.mkdir [{marker}]",
    "!!python/name:os.mkdir",
    "!!python/module:os",
])
def test_yaml_tags_that_build_python_objects_are_refused(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = payload.format(marker=json.dumps(str(marker)))
    config = tmp_path / "config.yaml"
    config.write_text(f"name: {text}\ntasks: []\n")
    result = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "not valid YAML" in " ".join(result.output.split())
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    good = tmp_path / "good.yaml"
    good.write_text("tasks: []\n")
    result = runner.invoke(app, ["train", str(good), "--run-dir", str(tmp_path / "run"),
                                 "--set", f"name={text}"])
    assert result.exit_code == 2 and "not valid YAML" in " ".join(result.output.split())
    assert not marker.exists()


def test_code_in_config_strings_stays_a_string(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('os').mkdir({str(marker)!r})"
    config = load_config({  # (a run name must be a plain name: tests/test_names_and_paths.py)
        "data": {"path": "rows.csv", "constant": {"note": code}, "rename": {"a": code}},
        "tasks": [{"name": "t", "kind": "classification", "input": "text", "label": "label",
                   "label_map": {"1": code}, "metric": "accuracy"}],
        "model": {"backbone": {"type": "mlp"}},
        "balancer": {"name": "ew"},
    }, overrides=[f"tasks.0.labels=[\"{code}\", b]"])
    assert config.tasks[0].label_map == {"1": code} and config.data.constant == {"note": code}
    assert config.tasks[0].labels == [code, "b"]
    assert not marker.exists()


# -------------------------------------------------------- hub loading and remote code


class _Recorder:
    """Stands in for a `from_pretrained`: records its keywords, then fails like a missing
    model (so nothing is downloaded and nothing runs)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        raise OSError("recorded; not loading anything")


@pytest.fixture
def hf_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Recorder]:
    import transformers

    recorders = {}
    for cls in ("AutoModel", "AutoTokenizer", "AutoConfig"):
        recorder = _Recorder()
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", recorder)
        recorders[cls] = recorder
    return recorders


@pytest.mark.parametrize("explicit", [None, False, True])
def test_hub_models_get_trust_remote_code_only_from_the_config(
        explicit: bool | None, hf_calls: dict[str, _Recorder], tmp_path: Path) -> None:
    from polytask.models.backbones import build_text

    section: dict[str, Any] = {"type": "hf", "name": "some-org/some-model"}
    if explicit is not None:
        section["trust_remote_code"] = explicit
    with pytest.raises(ConfigError, match=r"model\.backbone\.name"):
        build_text(BackboneSpec.model_validate(section))
    calls = [c for r in hf_calls.values() for c in r.calls]
    assert calls, "build_text did not go through from_pretrained"
    assert all(c.get("trust_remote_code", False) is bool(explicit) for c in calls), calls

    # the same through the CLI: the config file is the only way to turn it on
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["a b", "c d"] * 10, "label": ["x", "y"] * 10}).to_csv(rows,
                                                                              index=False)
    config = {"data": {"path": str(rows)},
              "tasks": [{"name": "t", "kind": "classification", "input": "text",
                         "label": "label"}],
              "model": {"backbone": section}, "baselines": "none",
              "train": {"max_steps": 1, "progress": False}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    for recorder in hf_calls.values():
        recorder.calls.clear()
    result = runner.invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "some-org/some-model" in result.output
    calls = [c for r in hf_calls.values() for c in r.calls]
    assert calls and all(c.get("trust_remote_code", False) is bool(explicit) for c in calls)


@pytest.fixture
def dataset_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[tuple, dict]]:
    """`datasets.load_dataset` recording its arguments; hub ids get a tiny in-memory
    dataset, local files are read for real."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    real = datasets.load_dataset
    calls: list[tuple[tuple, dict]] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        if args and args[0] in {"csv", "json", "parquet"}:
            return real(*args, **kwargs)
        table = datasets.Dataset.from_dict({"text": ["a"] * 20, "label": ["x", "y"] * 10})
        return datasets.DatasetDict({"train": table})

    monkeypatch.setattr(datasets, "load_dataset", record)
    return calls


@pytest.mark.parametrize("explicit", [None, False, True])
def test_hub_datasets_get_trust_remote_code_only_from_the_config(
        explicit: bool | None, dataset_calls: list[tuple[tuple, dict]]) -> None:
    section: dict[str, Any] = {"path": "some-org/some-dataset", "hub": True}
    if explicit is not None:
        section["trust_remote_code"] = explicit
    config = load_config({"data": section, "tasks": [
        {"name": "t", "kind": "classification", "input": "text", "label": "label"}],
        "model": {"backbone": {"type": "mlp"}}})
    source = load_source("shared", config.data, 0, 0.1, 0.1, "data")
    assert len(source.frames["train"]) > 0
    assert len(dataset_calls) == 1
    args, kwargs = dataset_calls[0]
    assert args[0] == "some-org/some-dataset"
    assert kwargs.get("trust_remote_code", False) is bool(explicit)


def test_local_files_never_ask_for_remote_code(dataset_calls: list[tuple[tuple, dict]],
                                               tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"  # JSON goes through `datasets` (CSV is read by pandas)
    pd.DataFrame({"text": ["a"] * 20, "label": ["x", "y"] * 10}).to_json(
        rows, orient="records", lines=True)
    load_source("shared", DataSpec(path=str(rows), trust_remote_code=True), 0, 0.1, 0.1,
                "data")
    assert dataset_calls and all("trust_remote_code" not in kw for _, kw in dataset_calls)


# ------------------------------------------------------------- what a run writes and reads


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polytask import Task, Trainer

    folder = tmp_path_factory.mktemp("safe-run")
    frame = pd.DataFrame({"a": [float(i % 7) for i in range(60)],
                          "b": ["u", "v", "w"] * 20,
                          "y": ["p", "q"] * 30})
    config = load_config({
        "data": frame,
        "tasks": [Task(name="y", kind="classification", input=["a", "b"], label="y")],
        "model": {"backbone": {"type": "mlp", "hidden": [4]}}, "baselines": "none",
        "train": {"max_steps": 2, "eval_every": 1, "batch_size": 8, "progress": False,
                  "callbacks": []},
    })
    Trainer(config, folder / "run").fit()
    return folder / "run"


def test_a_run_stores_weights_only_as_safetensors(finished_run: Path) -> None:
    files = [p.relative_to(finished_run) for p in finished_run.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    pickles = [p for p in files if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".pickle",
                                               ".ckpt"}]
    # the only pickle-based file is the checkpoint's training state, with no weights in it
    assert pickles and all(p.name == "state.pt" and p.parts[0] == "checkpoints"
                           for p in pickles), pickles
    for directory in ("model", "best"):
        assert {p.suffix for p in (finished_run / directory).iterdir()} <= {".safetensors",
                                                                           ".json"}
    for state in pickles:
        loaded = torch.load(finished_run / state, weights_only=True, map_location="cpu")
        assert "model" not in loaded and set(loaded) >= {"optimizer", "rng"}


def _booby_trap(marker: Path) -> Any:
    class Trap:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return os.mkdir, (str(marker),)
    return Trap()


def _trapped_checkpoint(run: Path, directory: Path, marker: Path, step: int) -> Path:
    """A copy of a real checkpoint whose state.pt would run code when unpickled, with a
    manifest whose checksums match (so only the loader stands in the way)."""
    good = checkpoint.list_checkpoints(run / "checkpoints")[-1]
    target = directory / f"{checkpoint.PREFIX}{step:07d}"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    torch.save({"optimizer": _booby_trap(marker)}, target / "state.pt")
    manifest = {"step": step, "sha256": {f: checkpoint.sha256(target / f)
                                         for f in ("model.safetensors", "state.pt")}}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_a_booby_trapped_checkpoint_does_not_run_code(finished_run: Path,
                                                      tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = tmp_path / "checkpoints"
    _trapped_checkpoint(finished_run, directory, marker, step=5)
    with contextlib.suppress(CheckpointError, pickle.UnpicklingError, RuntimeError):
        checkpoint.load_latest(directory, warn=lambda message: None)
    assert not marker.exists(), "unpickling a checkpoint ran code"


def test_a_pickle_disguised_as_safetensors_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_booby_trap(marker)))
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint.load_weights_file(path)
    assert not marker.exists()


def test_a_booby_trapped_checkpoint_is_reported_and_skipped(finished_run: Path,
                                                            tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = tmp_path / "checkpoints"
    good = checkpoint.list_checkpoints(finished_run / "checkpoints")[-1]
    (directory / good.name).parent.mkdir(parents=True)
    import shutil

    shutil.copytree(good, directory / good.name)
    _trapped_checkpoint(finished_run, directory, marker, step=99)
    warnings: list[str] = []
    found = checkpoint.load_latest(directory, warn=warnings.append)
    assert found is not None and found[0] == int(good.name.removeprefix(checkpoint.PREFIX))
    assert len(warnings) == 1 and "step-0000099" in warnings[0]
    assert not marker.exists()
