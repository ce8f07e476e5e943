"""The command line: parse, load the profile, call one library function, print, exit.

Human output goes to stderr; `--json` prints one JSON object on stdout. Exit codes: 0 done,
1 a gate failed or the job failed at run time, 2 bad input, 130 interrupted (after saving).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: checkpoints are local files
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # kdcli draws its own progress, on stderr

from kdcli.console import err, human_bytes, print_json, progress, table
from kdcli.errors import BadInput, KdcliError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress model checkpoints by knowledge distillation, from one YAML profile.")

ProfileArg = Annotated[Path, typer.Argument(help="The job's YAML profile.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: --set train.lr=3e-5.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def command(name: str) -> Callable:
    """Register a subcommand whose KdcliErrors become one clear message and an exit code."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            _quiet_libraries()
            try:
                fn(*args, **kwargs)
            except KdcliError as exc:
                _debug_traceback()
                # Messages hold user text (paths, "losses[hidden_mse]"): escaped, or rich eats it as markup.
                err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, markup=True,
                          soft_wrap=True)
                if exc.hint:
                    err.print(f"  hint: {exc.hint}", highlight=False, markup=False, soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt:
                err.print("interrupted", style="yellow")
                raise typer.Exit(130) from None
            except (typer.Exit, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
                _debug_traceback()
                err.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc).strip()[:500])}",
                          markup=True, highlight=False, soft_wrap=True)
                err.print("  hint: this looks like a bug in kdcli; rerun with KDCLI_DEBUG=1 for the traceback")
                raise typer.Exit(1) from None
        return app.command(name)(run)
    return wrap


def _debug_traceback() -> None:
    if os.environ.get("KDCLI_DEBUG") == "1":
        traceback.print_exc(file=sys.stderr)


def _quiet_libraries() -> None:
    # Through the environment, so that bad input fails fast, before transformers (and torch) load.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if os.environ.get("KDCLI_DEBUG") != "1":
        # torch warns about a refused pickle's protocol before kdcli's own error: one message, not two.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
    if "transformers" in sys.modules:  # already loaded by the caller: the environment is read too late
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def _load(profile: Path, overrides: list[str] | None):  # noqa: ANN202 - kdcli.profile.Profile
    from kdcli.profile import load_profile
    return load_profile(profile, overrides or [])


@command("check")
def check(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Validate a profile; with checkpoints present, run one batch through teacher and student."""
    loaded = _load(profile, set_)  # first: a bad profile fails before torch loads
    from kdcli.commands.check import check_profile
    report = check_profile(loaded)
    if json_:
        print_json(report.to_json())
        return
    err.print(f"[green]profile ok[/]: {profile}")
    for role, probe in (("teacher", report.teacher), ("student", report.student)):
        if probe and probe.loaded:
            err.print(f"  {role}: {probe.architecture} · {probe.layers} layers · {probe.params:,} params · "
                      f"output {probe.output_shape}")
        elif probe:
            err.print(f"  {role}: {probe.status}")
    for loss in report.losses:
        err.print(f"  loss {loss['kind']} (weight {loss['weight']})"
                  + (f": map {loss['map']}" if loss.get("map") else ""))
    if report.classes:
        names = report.classes["names"]
        err.print(f"  classes ({report.classes['source']}): " + ", ".join(names[:12])
                  + (f" and {len(names) - 12} more" if len(names) > 12 else ""), markup=False, highlight=False)
    if report.samples:
        err.print("  data: " + ", ".join(f"{which} {n:,} rows" for which, n in report.samples.items()))


@command("init-student")
def init_student_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Derive a smaller student from the teacher: kept layers copied bit for bit."""
    loaded = _load(profile, set_)
    from kdcli.commands.init_student import init_student
    report = init_student(loaded)
    if json_:
        print_json(report.to_json())
        return
    t, s = report.teacher, report.student
    rows = [[field, t.get(key), s.get(key)] for field, key in
            (("architecture", "architecture"), ("layers", "layers"), ("parameters", "params"))]
    rows.append(["size on disk", human_bytes(t.get("size_bytes")), human_bytes(s.get("size_bytes"))])
    err.print(table("init-student", ["", "teacher", "student"], rows))
    if report.layer_map:
        err.print("student layer ← teacher layer: " + ", ".join(f"{i}←{t_}" for i, t_ in enumerate(report.layer_map)))
    err.print(f"student written to {report.output_dir} ({report.copied_tensors} tensors copied)")


@command("distill")
def distill_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
                resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
                nproc: Annotated[int, typer.Option(min=1, max=1024, help="Processes (devices) for data-parallel "
                                                   "training, launched through torchrun.")] = 1,
                ) -> None:
    """Train the student against the frozen teacher."""
    loaded = _load(profile, set_)  # a bad profile is one message, not one per process
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_torchrun(nproc))
    from kdcli.commands.distill import distill
    main_rank = _main_rank()
    with progress(quiet or not main_rank) as bar:
        task = bar.add_task("distill", total=None, info="")

        def on_step(record: dict) -> None:
            bar.update(task, completed=record["step"], total=record["total_steps"],
                       description=f"distill [{record['stage']}]",
                       info=f"loss {record['loss']:.4f} · {record['samples_per_s']:.0f} samples/s")
        result = distill(loaded, resume=resume, on_step=on_step)
    if not main_rank:
        return
    if json_:
        print_json(result.to_json())
        return
    err.print(f"[green]done[/]: student written to {result.student}")
    if result.eval:
        err.print(table("eval (student)", ["metric", "value"], _flat(result.eval).items()))


def _flat(pair: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"metrics": {accuracy}, "agreement": {top1}} as rows: accuracy, agreement top1."""
    return {**pair.get("metrics", {}), **{f"agreement {k}": v for k, v in pair.get("agreement", {}).items()}}


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _torchrun(nproc: int) -> int:
    """Run this same distill command under torch.distributed.run with nproc processes."""
    import subprocess
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "kdcli", *args]
    return subprocess.call(command)


@command("pseudo-label")
def pseudo_label_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
    input_: Annotated[Optional[Path], typer.Option("--input", help="Unlabeled data (default data.unlabeled).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="labels.jsonl path (default RUN/pseudo/labels.jsonl).")] = None,
) -> None:
    """Label unlabeled data with the teacher (Noisy Student): JSONL with label, confidence, top-k."""
    loaded = _load(profile, set_)
    from kdcli.commands.pseudo_label import pseudo_label
    with progress(quiet or not _main_rank()) as bar:
        task = bar.add_task("pseudo-label", total=None, info="")
        result = pseudo_label(loaded, input_, output,
                              on_batch=lambda done, total: bar.update(task, completed=done, total=total))
    if not _main_rank():
        return
    if json_:
        print_json(result.to_json())
        return
    rows = [[name, c["labelled"], c["kept"], c["dropped"], c["in_output"]] for name, c in result.summary.items()]
    err.print(table(f"pseudo-label: {result.kept} records of {result.total} samples",
                    ["class", "labelled", "kept", "dropped", "records"], rows))
    err.print(f"written to {result.output}")


@command("noisy-student")
def noisy_student_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="How many teacher -> student rounds.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted loop.")] = False,
) -> None:
    """pseudo-label then distill, round after round; each round's student teaches the next."""
    loaded = _load(profile, set_)
    from kdcli.commands.noisy_student import noisy_student
    result = noisy_student(loaded, rounds, resume=resume,
                           on_event=lambda m: err.print(m, markup=False, highlight=False))
    if json_:
        print_json(result.to_json())
        return
    rows = [[r["round"], *(r["eval"].get("metrics", {}).get(k) for k in ("accuracy", "macro_f1")), r["student"]]
            for r in result.rounds]
    err.print(table("noisy-student", ["round", "accuracy", "macro_f1", "student"], rows))


@command("evaluate")
def evaluate_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False,
    model: Annotated[str, typer.Option(help="student, teacher, a checkpoint folder or an .onnx file.")] = "student",
    output: Annotated[Optional[Path], typer.Option(help="Where to write the report (default RUN/eval.json).")] = None,
    min_retention: Annotated[Optional[float], typer.Option(help="Gate: exit 1 below this retention.")] = None,
    min_metric: Annotated[Optional[float], typer.Option(help="Gate: exit 1 below this metric.")] = None,
    max_kl: Annotated[Optional[float], typer.Option(help="Gate: exit 1 above this teacher-student KL.")] = None,
) -> None:
    """Teacher and student side by side: accuracy, agreement, retention, size, speed; CI gates."""
    loaded = _load(profile, set_)
    from kdcli.commands.evaluate import Gates, check_gates, evaluate
    report = evaluate(loaded, model, output)
    if json_:
        print_json({**report.to_json(), "output_dir": str(loaded.output)})
    else:
        _print_eval(report)
    check_gates(report, Gates(min_retention, min_metric, max_kl))


def _print_eval(report: Any) -> None:  # kdcli.commands.evaluate.EvalReport
    rows = [[name, report.teacher_metrics.get(name), value] for name, value in report.metrics.items()]
    rows += [[f"agreement {k}", None, v] for k, v in report.agreement.items()]
    rows += [["retention", None, report.retention],
             ["parameters", report.params["teacher"], report.params["student"]],
             ["size", human_bytes(report.size_bytes["teacher"]), human_bytes(report.size_bytes["student"])],
             ["samples/s", report.samples_per_s["teacher"], report.samples_per_s["student"]]]
    err.print(table(f"evaluate: {report.model} on {report.samples} samples", ["", "teacher", "student"], rows))


@command("export")
def export_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False,
    student: Annotated[Optional[Path], typer.Option(help="Student folder (default RUN/student).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Export folder (default RUN/export).")] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Parity tolerance (default by family).")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="int8: also write a dynamically quantized model.")] = None,
    latency: Annotated[bool, typer.Option(help="Measure teacher vs student latency.")] = True,
    latency_seconds: Annotated[float, typer.Option(min=0.0, help="Least timed seconds per latency measurement "
                                                   "(each also runs at least 10 times).")] = 0.5,
    max_drop: Annotated[Optional[float], typer.Option(min=0.0, help="Gate (with --quantize int8): exit 1 when int8 "
                                                      "loses more than this of the metric (accuracy, cosine) on the "
                                                      "eval data.")] = None,
) -> None:
    """The student to ONNX, checked against PyTorch in onnxruntime, with a latency report."""
    if quantize not in (None, "int8"):
        raise BadInput(f"--quantize {quantize}: only int8 is supported", hint="use --quantize int8")
    loaded = _load(profile, set_)
    from kdcli.commands.export import export_profile, int8_gate, parity_gate
    result = export_profile(loaded, student, output, atol, quantize, latency,
                            on_event=None if json_ else lambda m: err.print(m), latency_seconds=latency_seconds,
                            max_drop=max_drop)
    if json_:
        print_json(result.to_json())
    else:
        _print_parity(result.parity)
        if result.int8 is not None:
            _print_int8(result.int8)
        if result.latency is not None:
            _print_latency(result.latency)
        err.print(f"written to {result.output_dir}")
    parity_gate(result.parity)
    int8_gate(result.int8)


def _print_parity(parity: Any) -> None:  # kdcli.onnx.parity.ParityReport
    diffs = parity.diffs()
    rows = [[name, diffs[name], "ok" if o["ok"] else "FAIL"] for name, o in parity.outputs.items()]
    err.print(table(f"parity (atol {parity.atol:g}, {len(parity.shapes)} shapes)",
                    ["output", "max abs diff", ""], rows))


def _print_int8(int8: Any) -> None:  # kdcli.commands.export.Int8Result
    if int8.metric is not None:
        gate = "not gated" if int8.max_drop is None else f"gate --max-drop {int8.max_drop:g}: " + (
            "ok" if int8.passed else "FAILED")
        err.print(f"int8 vs fp32 on {int8.samples} samples: {int8.metric} {_num(int8.int8)} (fp32 {_num(int8.fp32)}, "
                  f"drop {_num(int8.drop)}; {gate})", highlight=False, markup=False, soft_wrap=True)
    diffs = ", ".join(f"{name} {'inf' if d is None else format(d, '.3g')}" for name, d in int8.max_abs_diff.items())
    agreement = ", ".join(f"{k} {v:.4f}" for k, v in int8.agreement.items())
    err.print(f"int8: {int8.onnx} ({human_bytes(int8.size_bytes)})" + (f", agreement with fp32: {agreement}"
              if agreement else "") + f", max abs diff to PyTorch: {diffs} (see int8.json)",
              highlight=False, markup=False, soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_latency(report: dict) -> None:  # kdcli.onnx.latency.LatencyReport: the latency.json document
    rows = [[r["model"], r["runtime"], r["batch_size"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["samples_per_s"]]
            for r in report["rows"]]
    err.print(table(f"latency ({report['threads']} threads)", ["model", "runtime", "batch", "p50 ms", "p90 ms",
                                                                "p99 ms", "samples/s"], rows))
    for key, who in (("speedup", "student"), ("speedup_int8", "int8 student")):
        for runtime, by_batch in report.get(key, {}).items():
            if by_batch:
                err.print(f"{who} speed-up over teacher, {runtime}: "
                          + ", ".join(f"batch {b}: {x:.2f}x" for b, x in by_batch.items()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
