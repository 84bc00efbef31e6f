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
