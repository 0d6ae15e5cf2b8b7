"""What a run shows while it trains: plain lines in a log file, a bar whose step count and
ETA stay on screen, and word while the data and model load."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console, Group

from polytask.config import load_config
from polytask.train.callbacks import ProgressDisplay, loading_status
from polytask.train.trainer import Trainer
from tests.conftest import tabular_config

LOSSES = {"loss/income": 0.4121, "loss/never_married": 0.388, "loss/hours_per_week": 1.25,
          "loss/occupation_group": 2.5}


def _file_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=40), buffer


def test_a_file_gets_a_plain_line_every_log_every_steps() -> None:
    console, buffer = _file_console()
    with ProgressDisplay(total=30, start=0, enabled=True, console=console, every=10) as bar:
        for step in range(1, 31):
            bar.update(step, LOSSES if step % 10 == 0 else {})
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 3  # one per 10 steps, never wrapped at the console width
    assert lines[0].startswith("step 10/30 (33%) · ")
    assert re.search(r" · [\d.]+ it/s · ETA \d+:\d\d:\d\d · loss income 0.412 never_married "
                     r"0.388 hours_per_week 1.250 occupation_group 2.500$", lines[0])
    assert lines[2].startswith("step 30/30 (100%)") and "ETA 0:00:00" in lines[2]
    assert "\x1b" not in buffer.getvalue()  # no terminal control codes in a log file


def test_a_resumed_run_counts_from_its_step_and_prints_the_last_step() -> None:
    console, buffer = _file_console()
    with ProgressDisplay(total=25, start=20, enabled=True, console=console, every=10) as bar:
        for step in range(21, 26):
            bar.update(step, {})
    assert [line.split(" · ")[0] for line in buffer.getvalue().splitlines()] == [
        "step 25/25 (100%)"]


def test_disabled_progress_prints_nothing() -> None:
    console, buffer = _file_console()
    with ProgressDisplay(total=20, start=0, enabled=False, console=console, every=10) as bar:
        for step in range(1, 21):
            bar.update(step, LOSSES)
    with loading_status(console, enabled=False):
        pass
    assert buffer.getvalue() == ""


def test_the_bar_keeps_count_and_eta_on_screen_with_many_tasks() -> None:
    width = 60
    terminal = Console(file=io.StringIO(), force_terminal=True, width=width)
    with ProgressDisplay(total=300, start=0, enabled=True, console=terminal, every=10) as bar:
        bar.update(40, LOSSES)
        shown = Group(*bar.progress.get_renderables())
    screen = Console(file=io.StringIO(), width=width, record=True)
    screen.print(shown)
    lines = screen.export_text().splitlines()
    assert len(lines) == 2
    assert "40/300" in lines[0] and re.search(r"(\d+:\d\d:\d\d|-:--:--)$", lines[0].rstrip())
    assert lines[1].startswith("loss income 0.412 never_married 0.388")
    assert len(lines[1]) <= width and lines[1].rstrip().endswith("…")


def test_loading_says_so_in_a_file_and_spins_on_a_terminal() -> None:
    console, buffer = _file_console()
    with loading_status(console, enabled=True):
        assert buffer.getvalue() == "loading data and model...\n"  # before the slow part
    terminal_buffer = io.StringIO()
    terminal = Console(file=terminal_buffer, force_terminal=True, width=60)
    with loading_status(terminal, enabled=True):
        pass
    assert "loading data and model..." in terminal_buffer.getvalue()


def test_a_run_logged_to_a_file_shows_loading_then_progress(tmp_path: Path,
                                                           tabular_file: Path) -> None:
    config = load_config(tabular_config(tabular_file, max_steps=20, log_every=5,
                                        eval_every=20, progress=True))
    console, buffer = _file_console()
    Trainer(config, tmp_path / "run", console=console).fit()
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "loading data and model..."
    steps = [line.split(" (")[0] for line in lines if line.startswith("step ")]
    assert steps == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert "loss up " in lines[-1] and " size " in lines[-1] and " flags " in lines[-1]
