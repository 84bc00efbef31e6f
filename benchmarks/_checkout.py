"""Put this checkout's package first on ``sys.path`` (import it before ``captum_smoothhess``).

A benchmark run as ``python benchmarks/NAME.py`` has ``benchmarks/`` on its path, not the
checkout, so ``import captum_smoothhess`` would find whatever is installed: after ``pip
install -e`` in another clone (a CI check, say), that other clone's code. Importing this
module first makes every benchmark measure the code beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
