"""The one-command demo: ``demo --quick`` writes its figures and a report that embeds them."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from captum_smoothhess.__main__ import main

EXPECTED_FIGURES = {
    "interactions_pixels.png",
    "interactions_groups.png",
    "four_quadrant.png",
    "kernels.png",
    "kernel_gradients.png",
    "caso_vs_cafo.png",
    "pmse.png",
    "interactions_dataset.png",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class DemoRun(NamedTuple):
    out: Path
    stdout: str
    rng_unchanged: bool


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("demo") / "out"
    state = torch.get_rng_state()
    buffer = io.StringIO()
    # Through the command line, as a user runs `python -m captum_smoothhess demo --quick`.
    with contextlib.redirect_stdout(buffer):
        assert main(["demo", "--out", str(out), "--quick"]) == 0
    return DemoRun(out, buffer.getvalue(), bool(torch.equal(state, torch.get_rng_state())))


def test_demo_writes_figures(demo_run: DemoRun) -> None:
    pngs = {p.name for p in demo_run.out.glob("*.png")}
    assert pngs >= EXPECTED_FIGURES
    for name in EXPECTED_FIGURES:
        data = (demo_run.out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, name  # a drawn figure, not an empty canvas


def test_report_embeds_figures_and_tables(demo_run: DemoRun) -> None:
    report = (demo_run.out / "report.md").read_text(encoding="utf-8")
    links = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))
    assert links == EXPECTED_FIGURES  # relative links, one per figure
    sections = ("SmoothHess pixel interactions", "Four Quadrant", "kernels", "CASO vs CAFO")
    for heading in (*sections, "Perturbation MSE", "Across the test set"):
        assert heading in report
    for method in ("SmoothHess + SmoothGrad", "SmoothGrad", "SoftPlus Hessian", "Gradient"):
        assert f"\n| {method}" in report
    assert not re.search(r"\bnan\b|\binf\b", report, flags=re.IGNORECASE)


def test_demo_prints_where_it_wrote(demo_run: DemoRun) -> None:
    assert str((demo_run.out / "report.md").resolve()) in demo_run.stdout


def test_demo_leaves_global_rng_alone(demo_run: DemoRun) -> None:
    assert demo_run.rng_unchanged


def test_package_root_imports_no_demo_code() -> None:
    # A fresh interpreter (this process may have imported the demo already), run from the repository
    # root so that it imports this checkout.
    code = "import captum_smoothhess, sys; print(sorted(m for m in sys.modules if 'demo' in m))"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("case", ["file", "empty", "under_file"])
def test_bad_out_is_a_usage_error(tmp_path: Path, case: str) -> None:
    """A bad --out gets argparse's usage error (exit code 2) before the demo trains anything."""
    (tmp_path / "afile").write_text("keep", encoding="utf-8")
    out = {"file": "afile", "empty": "", "under_file": str(Path("afile", "sub"))}[case]
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "captum_smoothhess", "demo", "--quick", "--out", out],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "usage: captum-smoothhess demo" in proc.stderr
    assert "error: argument --out:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""  # no progress: nothing ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "keep"


def _section(report: str, heading: str) -> str:
    start = report.index(heading)
    end = report.find("\n## ", start + 1)
    return report[start : end if end >= 0 else len(report)]


def _table(section: str) -> list:
    """The rows of the first markdown table of a section, as lists of stripped cells (header dropped)."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def _number(cell: str) -> float:
    return float(cell.split()[0])


def test_report_numbers_agree_with_its_statements(demo_run: DemoRun) -> None:
    """What report.md says about its numbers holds for the numbers it prints (the --quick run)."""
    from captum_smoothhess.datasets import four_quadrant_interaction, load_digits_tensors
    from captum_smoothhess.demo._common import _QUICK

    report = (demo_run.out / "report.md").read_text(encoding="utf-8")
    data = load_digits_tensors(seed=0)
    assert f"({len(data.y_train)} training images" in report and f"on {len(data.y_test)} held-out" in report
    acc = float(re.search(r"test accuracy (\d\.\d+)", report).group(1))  # type: ignore[union-attr]
    assert 0.5 < acc <= 1.0

    # 1. Significant pairs are a subset of the 2016; the tables are ranked by |interaction|; the sampling
    # sentence matches the tolerance it states.
    pixels = _section(report, "## 1.")
    n_sig = int(re.search(r"(\d+) of the 2016 pixel pairs", pixels).group(1))  # type: ignore[union-attr]
    assert 0 <= n_sig <= 2016
    rel = float(re.search(r"relative error (?:was|was still) (\d\.\d+)", pixels).group(1))  # type: ignore[union-attr]
    assert (rel <= _QUICK.interaction_tolerance) == ("until its estimated relative error" in pixels)
    for table in pixels.split("| rank |")[1:]:
        values = [abs(float(r[-1])) for r in _table("| rank |" + table)]
        assert values == sorted(values, reverse=True) and len(values) >= 5

    # 2. The closed form column is 2 / (pi stdevs^2) for the stdevs of the row.
    fq = _table(_section(report, "## 2."))
    stdevs_rows = [r for r in fq if len(r) == 3]
    assert [float(r[0]) for r in stdevs_rows] == list(_QUICK.fq_stdevs)
    for r in stdevs_rows:
        assert float(r[2]) == pytest.approx(four_quadrant_interaction(float(r[0])), rel=5e-3)

    # 4. sparsity=0.8: every map has 80% zeros; Jaccard overlaps are in [0, 1].
    caso = _section(report, "## 4.")
    rows = _table(caso[caso.index("| map | fraction of zeros |") :])
    assert [r[0] for r in rows] == ["CAFO", "CASO (autograd H)", "CASO (SmoothHess H)"]
    assert all(r[1] == "0.80" for r in rows)
    overlaps = re.search(r"per digit: ([\d., ]+);", caso).group(1)  # type: ignore[union-attr]
    assert all(0.0 <= float(o) <= 1.0 for o in overlaps.split(", "))

    # 5. PMSE is non-negative, its standard error too, and each knob comes from the grid stated.
    pmse = _table(_section(report, "## 5."))
    assert [r[0] for r in pmse][:2] == ["SmoothHess + SmoothGrad", "SmoothGrad"] and len(pmse) == 4
    for r in pmse:
        mean, se = re.match(r"(\S+) \(± (\S+)\)", r[1]).groups()  # type: ignore[union-attr]
        assert float(mean) >= 0 and float(se) >= 0
        grid = _QUICK.stdevs_grid if r[0].startswith("Smooth") else None
        grid = _QUICK.beta_grid if r[0].startswith("SoftPlus") else grid
        if grid is None:
            assert r[-1] == "-"
        else:
            assert float(r[-1]) in grid

    # 6. Ranked by |mean|; the mean absolute value bounds |mean|; the count of significant pairs is <= 120.
    dataset = _section(report, "## 6.")
    table = _table(dataset)
    means = [abs(_number(r[1])) for r in table]
    assert means == sorted(means, reverse=True)
    assert all(_number(r[3]) >= abs(_number(r[1])) * (1 - 1e-2) for r in table)
    n_pairs = int(re.search(r"(\d+) of the 120 patch pairs", dataset).group(1))  # type: ignore[union-attr]
    assert 0 <= n_pairs <= 120
