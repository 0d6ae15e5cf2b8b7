"""benchmarks/nyuv2.py runs the Nash-MTL protocol for two steps on a synthetic folder of the
preprocessed NYUv2 layout and prints the papers' table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "suites"))
from test_dense_suites import nyuv2_folder

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "nyuv2.py"


def load_script() -> object:
    spec = importlib.util.spec_from_file_location("nyuv2_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_steps_print_the_paper_table(tmp_path: Path) -> None:
    bench = load_script()
    root = nyuv2_folder(tmp_path / "nyuv2", size=(32, 32))
    text = bench.main(["--data", str(root), "--balancers", "ew",  # type: ignore[attr-defined]
                       "--steps", "2", "--out", str(tmp_path / "runs")])
    lines = text.splitlines()
    assert all(name in lines[0] for name in ("mIoU", "Abs Err", "Median", "11.25", "Δm%"))
    assert lines[3].startswith("ew") and len(lines[3].split()) == 11
    assert "negative = better" in lines[-1]


def test_delta_m_uses_the_papers_sign() -> None:
    bench = load_script()
    assert bench.delta_m_paper(list(bench.STL)) == pytest.approx(0.0)  # type: ignore[attr-defined]
    stl, columns = bench.STL, bench.COLUMNS  # type: ignore[attr-defined]
    better = [v * (1.1 if c[3] else 0.9) for v, c in zip(stl, columns, strict=True)]
    assert bench.delta_m_paper(better) == pytest.approx(-10.0)  # type: ignore[attr-defined]
