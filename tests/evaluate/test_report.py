"""report.html for a run and for a bench: every expected figure is embedded (img tag with its
title) and written as a PNG beside the page; figures a run did not record are explained."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polytask.cli import app
from polytask.errors import PolytaskError
from polytask.evaluate.leaderboard import build_leaderboard
from polytask.evaluate.report import FIGURE_TITLES, write_report

TASKS = ["up", "size"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(folder: Path, weights: bool = True, cosines: bool = True,
               results: bool = True) -> Path:
    folder.mkdir(parents=True)
    records = []
    for step in range(5, 55, 5):
        record: dict[str, object] = {"step": step, "split": "train", "lr": 0.01 / step,
                                     "loss/up": 1 / step, "loss/size": 2 / step}
        if weights:
            record.update({"weight/up": 1 + step / 100, "weight/size": 1 - step / 100})
        if cosines:
            record["cosine/up/size"] = (step - 30) / 30
        records.append(record)
        if step % 10 == 0:
            records.append({"step": step, "split": "validation", "score": step / 10,
                            "up/accuracy": 0.5 + step / 200, "size/mae": 1.0 / step})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if results:
        (folder / "results.json").write_text(json.dumps({
            "tasks": {"up": {"metric": "accuracy", "higher_is_better": True, "value": 0.74,
                             "baseline": 0.7, "change_pct": 5.714},
                      "size": {"metric": "mae", "higher_is_better": False, "value": 0.03,
                               "baseline": 0.04, "change_pct": 25.0}},
            "delta_m": 15.357, "balancer": "uw", "architecture": "hard_sharing",
            "sampler": "all", "seed": 0, "steps": 50, "best_step": 50, "wall_time_s": 1.0}))
    return folder


def _runs() -> list[dict[str, object]]:
    """Hand-made results of three balancers x two seeds."""
    runs = []
    for balancer, step, values in (("ew", 0.01, [(0.8, 2.0), (0.82, 2.2)]),
                                   ("uw", 0.011, [(0.81, 1.8), (0.8, 2.0)]),
                                   ("pcgrad", 0.03, [(0.84, 2.1), (0.86, 2.1)])):
        for seed, (acc, mae) in enumerate(values):
            runs.append({"balancer": balancer, "architecture": "hard_sharing", "seed": seed,
                         "wall_time_s": 100 * step, "median_step_time_s": step,
                         "run_dir": f"cells/hard_sharing/{balancer}/seed{seed}",
                         "tasks": {"up": {"metric": "accuracy", "higher_is_better": True,
                                          "value": acc, "baseline": 0.8},
                                   "size": {"metric": "mae", "higher_is_better": False,
                                            "value": mae, "baseline": 2.0}}})
    return runs


def _images(page: str) -> dict[str, bytes]:
    """title -> PNG bytes of every embedded image."""
    found = re.findall(r'<img alt="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', page)
    return {title: base64.b64decode(data) for title, data in found}


def test_run_report_has_every_figure_embedded_and_beside(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    images = _images(page)
    for key in ("train_loss", "validation", "task_weights", "gradient_cosine",
                "single_vs_multi"):
        title = FIGURE_TITLES[key]
        assert f"<h2>{title}</h2>" in page
        assert images[title].startswith(PNG_MAGIC)
        assert (run / f"{key}.png").read_bytes() == images[title]
    assert "Test results" in page and "+15.36%" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_run_report_explains_what_was_not_logged(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", weights=False, cosines=False, results=False)
    page = write_report(run).read_text()
    images = _images(page)
    assert set(images) == {FIGURE_TITLES["train_loss"], FIGURE_TITLES["validation"]}
    assert "No gradient cosines logged" in page and "No task weights logged" in page
    assert "unfinished" in page
    assert not (run / "gradient_cosine.png").exists()


def test_constant_weights_are_not_plotted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run, weights=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        if record["split"] == "train":
            record.update({"weight/up": 1.0, "weight/size": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = write_report(run).read_text()
    assert FIGURE_TITLES["task_weights"] not in _images(page)
    assert "stayed constant" in page


def test_bench_report_has_leaderboard_and_charts(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    board = build_leaderboard(_runs())
    board["bench"] = {"source": "toy", "steps": 50, "seeds": [0, 1], "command": "polytask bench"}
    (bench / "leaderboard.json").write_text(json.dumps(board))
    cell = _write_run(bench / "cells/hard_sharing/uw/seed0")
    write_report(cell)
    page = write_report(bench).read_text()
    images = _images(page)
    for key in ("delta_m", "per_task", "cost"):
        assert images[FIGURE_TITLES[key]].startswith(PNG_MAGIC)
        assert (bench / f"{key}.png").exists()
    assert "<h2>Leaderboard</h2>" in page and "<table>" in page
    for name in ("uw", "pcgrad", "ew", "single-task", "Δm% ↑", "MR ↓"):
        assert f">{name}<" in page
    assert 'href="cells/hard_sharing/uw/seed0/report.html"' in page


def test_report_errors_and_cli(tmp_path: Path) -> None:
    with pytest.raises(PolytaskError, match="not a directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolytaskError, match=r"no metrics\.jsonl"):
        write_report(tmp_path / "empty")
    run = _write_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").exists()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output
