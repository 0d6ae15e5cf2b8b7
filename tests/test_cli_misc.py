"""The command line's global options (--version, --verbose) and the repository's own
references: every path the README, docs/ and the Makefile point at exists in the repo."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import datasets
import pytest
import transformers.utils.logging as transformers_logging
from typer.testing import CliRunner

from polytask.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
# "see docs/x.md", "see `examples/a.yaml`": a word with a slash or a file suffix after "see"
SEE_PATH = re.compile(r"\bsee `?([\w.\-/]*(?:/[\w.\-]*|\.(?:md|yaml|yml|py|toml|json|html)))`?",
                      re.IGNORECASE)


def test_version_prints_the_installed_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"polytask {version('polytask')}"


@pytest.fixture
def _restore_library_output() -> Iterator[None]:
    """The CLI sets process-wide library state: put it back for the other tests."""
    bars = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    levels = datasets.logging.get_verbosity(), transformers_logging.get_verbosity()
    yield
    (datasets.enable_progress_bars if bars[0] else datasets.disable_progress_bars)()
    (transformers_logging.enable_progress_bar if bars[1]
     else transformers_logging.disable_progress_bar)()
    datasets.logging.set_verbosity(levels[0])
    transformers_logging.set_verbosity(levels[1])


@pytest.mark.usefixtures("_restore_library_output")
def test_library_progress_bars_are_silenced_unless_verbose(tmp_path: Path) -> None:
    """By the commands that may load them (`eval` here, on a folder that is not a run)."""
    datasets.enable_progress_bars()
    transformers_logging.enable_progress_bar()
    assert runner.invoke(app, ["eval", str(tmp_path)]).exit_code == 2
    assert not datasets.is_progress_bar_enabled()
    assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.get_verbosity() == transformers_logging.ERROR

    assert runner.invoke(app, ["--verbose", "eval", str(tmp_path)]).exit_code == 2
    assert datasets.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()


def _documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]


def _references(text: str) -> list[str]:
    links = [link.split("#")[0] for link in MARKDOWN_LINK.findall(text)]
    local = [link for link in links if link and not re.match(r"[a-z]+:", link)]
    return local + [path.rstrip(".,") for path in SEE_PATH.findall(text)]


def _resolves_inside_the_repo(document: Path, reference: str) -> bool:
    for base in (document.parent, ROOT):
        target = (base / reference).resolve()
        if target.exists() and target.is_relative_to(ROOT):
            return True
    return False


def test_reference_finder_catches_a_path_outside_the_repo(tmp_path: Path) -> None:
    text = "read as files, see ../shared/RESOURCES.md. [m](docs/methods.md#x) [w](https://a.b)"
    assert _references(text) == ["docs/methods.md", "../shared/RESOURCES.md"]
    assert not _resolves_inside_the_repo(ROOT / "Makefile", "../shared/RESOURCES.md")


@pytest.mark.parametrize("document", _documents(), ids=lambda path: path.name)
def test_every_reference_resolves_inside_the_repo(document: Path) -> None:
    references = _references(document.read_text())
    broken = [ref for ref in references if not _resolves_inside_the_repo(document, ref)]
    assert not broken, f"{document.relative_to(ROOT)} points at missing or outside paths: {broken}"
