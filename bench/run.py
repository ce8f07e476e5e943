"""Run every benchmark (each prints its own JSON object)."""

from __future__ import annotations

import subprocess
import sys

for name in ("overhead", "speed", "memory", "device", "sst2_accuracy"):
    subprocess.run([sys.executable, "-m", f"bench.{name}"], check=True)
