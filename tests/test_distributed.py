"""SmoothHess over torch.distributed: two gloo ranks give the single-process result."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("dist_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(worker),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = torch.load(tmp_path / "single.pt")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["hess"], single["hess"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["grad"], single["grad"], rtol=1e-5, atol=1e-6)
        # Each rank evaluated half of the 2 x 600 perturbed rows (plus the 2-row check).
        assert got["rows"] == 600 + 2
    assert torch.count_nonzero(single["hess"]) > 0
