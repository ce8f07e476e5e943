"""Print the demo's outcome: the student's cosine to the teacher before and after, parity, speed-up."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run: Path) -> None:
    before = json.loads((run / "eval-before.json").read_text())["agreement"]["cosine_to_teacher"]
    report = json.loads((run / "eval.json").read_text())
    after = report["agreement"]["cosine_to_teacher"]
    parity = json.loads((run / "export" / "parity.json").read_text())
    latency = json.loads((run / "export" / "latency.json").read_text())
    diff = max(o["max_abs_diff"] for o in parity["outputs"].values())
    print(f"student's mean cosine to the teacher on {report['samples']} held-out sentences: "
          f"{before:.3f} before distillation -> {after:.3f} after")
    print(f"ONNX parity: {'ok' if parity['ok'] else 'FAILED'} (max abs diff {diff:.2e}, atol {parity['atol']:g})")
    for runtime, by_batch in latency["speedup"].items():
        print(f"student speed-up over teacher ({runtime}): "
              + ", ".join(f"batch {b}: {x:.2f}x" for b, x in by_batch.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
