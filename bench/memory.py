"""Peak resident memory of `kdcli distill` and how it grows with the batch size (one process each).

python -m bench.memory [--batch-sizes 8 32 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import SST2, classifier_teacher, emit, write_profile

CHILD = """
import json, resource, sys
from kdcli.profile import load_profile
from kdcli.commands.distill import distill
distill(load_profile(sys.argv[1]))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher = classifier_teacher(work / "teacher")
        from kdcli.commands.init_student import init_student
        from kdcli.profile import load_profile
        for size in args.batch_sizes:
            spec = {"name": "mem", "task": "sequence-classification", "teacher": {"path": str(teacher)},
                    "student": {"path": str(work / "init"), "init": {"layers": "uniform:3"}},
                    "data": {"train": str(SST2 / "dev.tsv"), "max_length": 64, "limit": size * 4},
                    "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}, {"kind": "hidden_mse"}]},
                    "train": {"max_steps": 3, "batch_size": size}, "output": str(work / f"run-{size}")}
            path = write_profile(work, spec, f"mem-{size}.yaml")
            if not (work / "init").exists():
                init_student(load_profile(path))
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
            rows.append({"batch_size": size, **json.loads(out.stdout.strip().splitlines()[-1])})
    base = rows[0]["peak_rss_mb"]
    emit({"bench": "memory", "model": "MiniLM-L6 teacher -> 3-layer student, seq <= 64", "rows": rows,
          "growth_mb_per_sample": round((rows[-1]["peak_rss_mb"] - base) /
                                        max(rows[-1]["batch_size"] - rows[0]["batch_size"], 1), 3)})


if __name__ == "__main__":
    main()
