"""Peak resident memory of the current process, for benchmarks that report memory.

``getrusage(RUSAGE_SELF).ru_maxrss`` is the wrong measure in a child process:
Python starts children with ``vfork``, and Linux carries the parent's peak over
``exec`` into the child's ``ru_maxrss``, so a small child launched by a large
parent reports the parent's peak. ``VmHWM`` in ``/proc/self/status`` belongs to
the child's own address space and can be reset (``clear_refs``).
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_mib() -> float:
    """Peak resident memory of this process since start (or :func:`reset_peak`), in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start a new peak-memory window (Linux: ``clear_refs`` 5 resets ``VmHWM``); else a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
