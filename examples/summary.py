"""Print the demo's outcome: the student used through sentence-transformers as the teacher was, its cosine to
the teacher before and after distillation, ONNX parity, the int8 model's cosine and the speed-ups."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SENTENCES = ["A charming and often affecting journey.", "The plot is a mess and the acting is worse.",
             "An utterly delightful film.", "Nothing in it works."]


def main(run: Path) -> None:
    before = json.loads((run / "eval-before.json").read_text())["agreement"]["cosine_to_teacher"]
    report = json.loads((run / "eval.json").read_text())
    after = report["agreement"]["cosine_to_teacher"]
    print(f"student's mean cosine to the teacher on {report['samples']} held-out sentences: "
          f"{before:.3f} before distillation -> {after:.3f} after")
    _sentence_transformers(run)
    export = run / "export"
    parity = json.loads((export / "parity.json").read_text())
    diff = max(o["max_abs_diff"] for o in parity["outputs"].values())
    print(f"ONNX parity ({', '.join(parity['outputs'])}): {'ok' if parity['ok'] else 'FAILED'} "
          f"(max abs diff {diff:.2e}, atol {parity['atol']:g})")
    latency = json.loads((export / "latency.json").read_text())
    int8_file = export / "int8.json"
    if int8_file.is_file():
        int8 = json.loads(int8_file.read_text())
        size = latency["size_bytes"]
        print(f"int8 ONNX: {int8['metric']} {int8['int8']:.3f} (fp32 {int8['fp32']:.3f}, drop {int8['drop']:.4f}), "
              f"{size.get('student-int8', 0) / 1e6:.1f} MB against fp32's {size['student'] / 1e6:.1f} MB")
    for key, who in (("speedup", "student"), ("speedup_int8", "int8 student")):
        for runtime, by_batch in latency.get(key, {}).items():
            if by_batch:
                print(f"{who} speed-up over teacher ({runtime}): "
                      + ", ".join(f"batch {b}: {x:.2f}x" for b, x in by_batch.items()))


def _sentence_transformers(run: Path) -> None:
    """Load both folders with sentence-transformers, as a service would, and compare what they return."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # both folders are local
    try:
        import transformers
        from sentence_transformers import SentenceTransformer
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        print("(sentence-transformers is not installed: pip install 'kdcli[examples]')")
        return
    import numpy as np
    teacher = SentenceTransformer(str(run / "teacher"), device="cpu")
    student = SentenceTransformer(str(run / "student"), device="cpu")
    t, s = teacher.encode(SENTENCES), student.encode(SENTENCES)
    modules = " -> ".join(type(m).__name__ for m in student)
    print(f"SentenceTransformer('{run / 'student'}'): {modules}, max_seq_length {student.max_seq_length} "
          f"(teacher: {' -> '.join(type(m).__name__ for m in teacher)}, {teacher.max_seq_length})")
    s_norm, t_norm = np.linalg.norm(s, axis=1), np.linalg.norm(t, axis=1)
    cosine = float(np.mean(np.sum(s * t, axis=1) / (s_norm * t_norm)))
    print(f"  vector norms: student {s_norm.mean():.3f}, teacher {t_norm.mean():.3f}; cosine student-teacher on "
          f"{len(SENTENCES)} sentences: {cosine:.3f}")
    pair = student.similarity(s[:1], s[2:3]).item(), teacher.similarity(t[:1], t[2:3]).item()
    print(f"  similarity of two positive reviews: student {pair[0]:.3f}, teacher {pair[1]:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
