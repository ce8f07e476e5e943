"""compress: from a teacher to a served student that meets a speed goal, in one command.

Candidates (depth, width, mixed; each in fp32 and dynamic int8) are built untrained, exported and timed in
onnxruntime beside the teacher on this machine; the one with the most capacity that meets the goal is distilled
with the profile's losses and data and judged on the task's primary metric (an int8 twin as its int8 file
scores); a failed gate tries the next, up to `max_trials` distillations; the winner is exported into a folder
that serves alone. Every stage is recorded in OUTPUT/compress/compress.json as it ends, so
`--resume` continues where a stopped run left off.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from kdcli.commands.checkpoints import load_student, load_teacher
from kdcli.commands.distill import distill
from kdcli.commands.evaluate import EvalReport, evaluate
from kdcli.commands.export import export_profile, teacher_export
from kdcli.commands.init_student import init_student
from kdcli.console import table
from kdcli.errors import BadInput
from kdcli.models.base import Adapter
from kdcli.models.hf import HFAdapter
from kdcli.models.prune import layout_of, shape_of
from kdcli.onnx.latency import INT8
from kdcli.profile import Profile, StudentInit, StudentSpec
from kdcli.runtime.files import atomic_write_json, atomic_write_text, check_writable
from kdcli.search import Candidate, Goal, closest, front, meets, ranked, shapes, with_int8

Say = Callable[[str], None]


@dataclass
class CompressReport:
    goal: Goal
    teacher_p50_ms: dict[int, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    chosen: str | None = None
    met: bool = False
    output_dir: str = ""
    shipped_speedup: dict[int, float] = field(default_factory=dict)  # the shipped file, timed again at export
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"goal": vars(self.goal) | {"batch_sizes": list(self.goal.batch_sizes)},
                "teacher_p50_ms": self.teacher_p50_ms, "candidates": [c.to_json() for c in self.candidates],
                "chosen": self.chosen, "met": self.met, "output_dir": self.output_dir,
                "shipped_speedup": self.shipped_speedup, "warning": self.warning}

    def render(self, out: Console) -> None:
        batches = self.goal.batch_sizes
        rows = [[c.name, c.capacity, *(c.speedup.get(b) for b in batches), c.score, c.drop, self.status(c)]
                for c in self.candidates]
        out.print(table(f"compress: {self.goal.describe()}",
                        ["candidate", "capacity", *(f"speed-up b{b}" for b in batches), "score", "drop", "status"],
                        rows))
        verdict = "goal met" if self.met else "goal NOT met"
        out.print(f"{verdict}: {self.chosen or 'no candidate'} → {self.output_dir}")
        if self.warning:
            out.print(f"warning: {self.warning}", style="yellow", highlight=False, markup=False)

    def status(self, c: Candidate) -> str:
        """chosen, passed or failed the gate (trained), fast enough (meets the speed and size goal), or blank."""
        if c.name == self.chosen:
            return "chosen"
        if c.passed is not None:
            return "passed gate" if c.passed else "failed gate"
        return "fast enough" if meets(c, self.goal) else ""


def compress(profile: Profile, goal: Goal, *, max_trials: int = 2, resume: bool = False,
             on_event: Say | None = None, latency_seconds: float = 0.5,
             on_step: Callable[[dict[str, Any]], None] | None = None) -> CompressReport:
    """Measure the candidates, distil the biggest meeting `goal` (the next on a failed gate), ship the winner;
    `on_event` hears each stage, `on_step` each training step."""
    say = on_event or (lambda message: None)
    work = Path(profile.output) / "compress"
    state = work / "compress.json"
    if state.is_file() and not resume:
        raise BadInput(f"{work} holds an earlier compress run", hint="pass --resume to continue it, or set output "
                       "to a new folder")
    check_writable(state)
    report = CompressReport(goal=goal, candidates=_previous(state) if resume else [])
    if not report.candidates:
        report.candidates = _candidates(profile)
    _measure(profile, report, work, say, latency_seconds)
    say("Pareto front (capacity, latency): " + ", ".join(
        f"{c.name} {c.size:,}" for c in front(report.candidates, goal.batch_sizes[0])))
    distilled: set[str] = set()
    for candidate in ranked(report.candidates, goal):
        if candidate.shape not in distilled and len(distilled) == max_trials:
            continue  # the budget of distillations is spent; a twin of a distilled shape is still judged
        distilled.add(candidate.shape)
        _train(profile, candidate, work, say, goal.max_drop, on_step)
        atomic_write_json(state, report.to_json())
        if candidate.passed:
            report.chosen, report.met = candidate.name, True
            break
    if report.chosen is None:  # the gate failed every trial (ship the best, exit 1), or nothing was fast enough
        best = _best_trained(ranked(report.candidates, goal)) or closest(report.candidates, goal)
        report.chosen = best.name if best is not None else None
    report.output_dir = str(_ship(profile, report, work, say, latency_seconds))
    atomic_write_json(state, report.to_json())
    return report


def _previous(state: Path) -> list[Candidate]:
    return [Candidate.from_json(c) for c in json.loads(state.read_text())["candidates"]] if state.is_file() else []


def _candidates(profile: Profile) -> list[Candidate]:
    teacher = load_teacher(profile)
    if teacher is None:
        raise BadInput("compress needs a teacher (`teacher:` in the profile)")
    width, sized_by_hidden = _width(teacher)
    found = shapes(teacher.cut_depth or teacher.depth, width, heads_with_hidden=sized_by_hidden)
    if isinstance(teacher, HFAdapter) and teacher.task.output == "embedding":
        # an embedding keeps its width (it is what the model serves): no candidate that prunes hidden
        found = [c for c in found if "hidden" not in c.init.get("prune", {})]
    # a causal LM is judged on perplexity, which the int8 file's scoring does not compute
    return found if profile.task.causal else with_int8(found)


def _width(teacher: Adapter) -> tuple[dict[str, int] | None, bool]:
    """The teacher's per-layer sizes where pruning knows its family (None: depth candidates only), and whether
    its heads are sized hidden / heads (then heads prune with hidden)."""
    try:
        layout, stack = layout_of(teacher.module)
    except BadInput:
        return None, True
    return shape_of(teacher.module, layout, stack).describe(), layout.head_dim_field is None


def _sub_profile(profile: Profile, candidate: Candidate, work: Path, output: Path | None = None) -> Profile:
    """The job with this candidate as its student (built in work/NAME/init, trained in work/NAME/run)."""
    init = StudentInit.model_validate({**profile.student.init.model_dump(exclude={"layers", "prune"}),
                                       **_init(candidate)})
    return profile.model_copy(update={"student": StudentSpec(path=work / candidate.shape / "init", init=init),
                                      "output": output or work / candidate.shape / "run"})


def _timed_at(profile: Profile, goal: Goal) -> Profile:
    """The profile with its latency batch sizes set to the goal's."""
    export = profile.export.model_copy(update={"batch_sizes": list(goal.batch_sizes)})
    return profile.model_copy(update={"export": export})


def _init(candidate: Candidate) -> dict[str, Any]:
    init = dict(candidate.init)
    if "prune" in init:
        init["prune"] = {"calibration_samples": 128, **init["prune"]}
    return init


def _measure(profile: Profile, report: CompressReport, work: Path, say: Say, seconds: float) -> None:
    """Build each shape untrained, export it (and its int8 file) and time both beside the teacher (onnxruntime,
    this machine); a stopped run measures only what it had not."""
    folders = list(dict.fromkeys(c.shape for c in report.candidates if not c.measured))
    for i, folder in enumerate(folders, 1):
        twins = [c for c in report.candidates if c.shape == folder]
        say(f"candidate {i}/{len(folders)}: {folder} (build, export, time)")
        sub = _timed_at(_sub_profile(profile, twins[0], work), report.goal)
        built = init_student(sub, force=True)
        capacity = load_student(sub, sub.student.path).body_param_count()
        quantize = "int8" if any(c.int8 for c in twins) else None
        exported = export_profile(sub, sub.student.path, work / folder / "export", quantize=quantize,
                                  latency_seconds=seconds)
        rows = exported.latency["rows"] if exported.latency else []
        report.teacher_p50_ms = _p50(rows, "teacher")
        for c in twins:
            c.params, c.capacity = built.student["params"], capacity
            c.size_mb = round(exported.size_bytes["int8" if c.int8 else "onnx"] / 1e6, 3)
            c.p50_ms = _p50(rows, INT8 if c.int8 else "student")
            c.speedup = {b: round(report.teacher_p50_ms[b] / c.p50_ms[b], 3) for b in c.p50_ms}
        for timed in (work / folder / "export", teacher_export(work / folder / "export")):  # not kept
            shutil.rmtree(timed, ignore_errors=True)
        atomic_write_json(work / "compress.json", report.to_json())


def _p50(rows: list[dict[str, Any]], model: str) -> dict[int, float]:
    return {int(r["batch_size"]): float(r["p50_ms"]) for r in rows
            if r["model"] == model and r["runtime"] == "onnxruntime"}


def _train(profile: Profile, candidate: Candidate, work: Path, say: Say, max_drop: float,
           on_step: Callable[[dict[str, Any]], None] | None) -> None:
    """Distil the candidate's shape with the profile's losses, data and budget (once for both twins; a stopped
    run resumes), then judge it: fp32 by evaluate, an int8 twin by its int8 file on the same eval data."""
    sub = _sub_profile(profile, candidate, work)
    run = Path(sub.output)
    if not (run / "student" / "config.json").is_file():
        say(f"distilling {candidate.shape} ({candidate.size:,} parameters outside the embeddings)")
        shared = _student_free_cache(profile)
        if shared:
            _link_files(work / "cache", run / "cache")  # the teacher's outputs, computed by an earlier trial
        distill(sub, resume=(run / "checkpoints" / "last.pt").is_file(), on_step=on_step, trust_cache=shared)
        if shared:
            _link_files(run / "cache", work / "cache")
    candidate.trained = True
    judged = evaluate(sub)
    value = None
    if candidate.int8:
        say(f"scoring {candidate.name}: the int8 file on the eval data")
        value = export_profile(sub, run / "student", work / candidate.shape / "int8", quantize="int8",
                               latency=False).int8
    candidate.score = judged.primary()[1] if value is None else value.int8
    candidate.drop = metric_drop(judged, candidate.score)
    candidate.passed = candidate.drop is not None and candidate.drop <= max_drop
    say(f"{candidate.name}: drop {candidate.drop} ({'passed' if candidate.passed else 'failed'} the gate)")


def _student_free_cache(profile: Profile) -> bool:
    """Whether the teacher cache holds nothing a student's shape chooses (logits, pooled embeddings: no layers
    named by a layer map), so one cache serves every candidate."""
    needs = {need for loss in profile.loss_specs() for need in loss.teacher_needs}
    return profile.train.cache_teacher and needs <= {"logits", "embedding"}


def _link_files(source: Path, target: Path) -> None:
    """Hard-link each file of `source` missing from `target` (a copy where links are not possible)."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not (target / path.name).exists():
            try:
                (target / path.name).hardlink_to(path)
            except OSError:  # another file system: copied whole, then renamed into place
                partial = target / f".{path.name}.partial"
                shutil.copy2(path, partial)
                partial.replace(target / path.name)


def metric_drop(report: EvalReport, value: float | None = None) -> float | None:
    """How much the primary metric fell (`value` in place of the student's, e.g. its int8 file's): teacher minus
    student where both have it (accuracy, F1), one minus retention for a causal LM's perplexity, else one minus
    the agreement (cosine to the teacher)."""
    name, measured = report.primary()
    value = measured if value is None else value
    if value is None:
        return None
    if report.task == "causal-lm":
        return 1.0 - report.retention if report.retention is not None else None
    if name in report.teacher_metrics:
        return round(report.teacher_metrics[name] - value, 6)
    return round(1.0 - value, 6)


def _best_trained(candidates: list[Candidate]) -> Candidate | None:
    trained = [c for c in candidates if c.trained and c.drop is not None]
    return min(trained, key=lambda c: c.drop) if trained else None  # type: ignore[arg-type,return-value]


def _ship(profile: Profile, report: CompressReport, work: Path, say: Say, seconds: float) -> Path:
    """The chosen student exported into OUTPUT/compressed with compress.json, report.md and the plot."""
    out = Path(profile.output) / "compressed"
    chosen = next((c for c in report.candidates if c.name == report.chosen), None)
    if chosen is None or not chosen.trained or not meets(chosen, report.goal):  # nothing to serve: the report
        atomic_write_text(work / "report.md", _markdown(report))
        return work
    sub = _timed_at(_sub_profile(profile, chosen, work), report.goal)
    say(f"exporting {chosen.name} to {out}")
    shipped = export_profile(sub, Path(sub.output) / "student", out, quantize="int8" if chosen.int8 else None,
                             latency_seconds=seconds)
    _timed_again(report, chosen, shipped.latency["rows"] if shipped.latency else [])
    report.output_dir = str(out)
    atomic_write_json(out / "compress.json", report.to_json())
    export_md = (out / "report.md").read_text(encoding="utf-8") if (out / "report.md").is_file() else ""
    atomic_write_text(out / "report.md", _markdown(report) + "\n" + export_md)
    _plot(report, out / "candidates.png")
    return out


def _timed_again(report: CompressReport, chosen: Candidate, rows: list[dict[str, Any]]) -> None:
    """The export times the shipped file once more: a miss there (timing noise on a busy or small machine can
    exceed the margin the search measured) is said, not hidden."""
    teacher, student = _p50(rows, "teacher"), _p50(rows, INT8 if chosen.int8 else "student")
    report.shipped_speedup = {b: round(teacher[b] / student[b], 3) for b in student if b in teacher}
    again = Candidate(chosen.name, chosen.init, size_mb=chosen.size_mb, p50_ms=student,
                      speedup=report.shipped_speedup)
    if report.shipped_speedup and not meets(again, report.goal):
        timings = ", ".join(f"batch {b}: {x:.2f}× (search {chosen.speedup.get(b, 0):.2f}×)"
                            for b, x in report.shipped_speedup.items())
        report.warning = (f"timed again at export, {chosen.name} misses the speed goal ({timings}); time it on "
                          "the serving machine, or rerun with a larger --latency-seconds")


def _markdown(report: CompressReport) -> str:
    batches = report.goal.batch_sizes
    lines = [f"# compress: {report.goal.describe()}", "",
             f"**{'Goal met' if report.met else 'Goal NOT met'}**: {report.chosen or 'no candidate'}.", "",
             *([f"Warning: {report.warning}", ""] if report.warning else []),
             "| candidate | capacity (parameters outside embeddings) | " + " | ".join(f"speed-up b{b}" for b in batches)
             + " | trained | score | drop | status |", "|---" * (6 + len(batches)) + "|"]
    for c in report.candidates:
        gate = report.status(c)
        lines.append(f"| {c.name} | {c.size:,} | "
                     + " | ".join(f"{c.speedup.get(b, 0):.2f}×" for b in batches)
                     + f" | {'yes' if c.trained else 'no'} | {_num(c.score)} | {_num(c.drop)} | {gate} |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _plot(report: CompressReport, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is optional (the `examples` extra)
        return
    batch = report.goal.batch_sizes[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in report.candidates:
        if not c.measured:
            continue
        y = c.score if c.score is not None else 0.0
        ax.scatter(c.speedup.get(batch, 0), y, marker="*" if c.name == report.chosen else "o",
                   s=160 if c.name == report.chosen else 40)
        ax.annotate(c.name, (c.speedup.get(batch, 0), y), fontsize=7)
    ax.set_xlabel(f"speed-up at batch {batch} (onnxruntime)")
    ax.set_ylabel("primary metric after distillation (0: not trained)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
