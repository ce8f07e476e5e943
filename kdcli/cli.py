"""The command line: parse, load the profile, call one library function, print, exit.

Human output goes to stderr; `--json` prints one JSON object on stdout (an error too). Exit codes: 0 done,
1 a gate failed or the job failed at run time, 2 bad input, 130 interrupted, 143 terminated (after saving).
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

import kdcli
from kdcli.console import err, forget_json, json_printed, print_json
from kdcli.errors import BadInput, DataWarning, GateFailed, KdcliError, ProfileDeprecation
from kdcli.runtime.progress import Progress, Task
from kdcli.runtime.signals import terminate_as_interrupt

EXIT_CODES = ("Exit codes: 0 done · 1 a gate failed or the job failed at run time · 2 bad input (profile, paths, "
              "data, an unwritable output) · 130 interrupted (Ctrl-C) · 143 terminated (SIGTERM); "
              "an interrupted distill saved a checkpoint for --resume.")

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, epilog=EXIT_CODES,
                  help="Compress model checkpoints by knowledge distillation, from one YAML profile.\n\n"
                       "Paths written in a profile are relative to the profile's folder; paths given on the command "
                       "line (options and --set values) are relative to the working directory.")

ProfileArg = Annotated[Path, typer.Argument(help="The job's YAML profile.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a profile field, repeatable: --set train.lr=3e-5 (a path is relative to the working "
                  "directory). Default: none.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (the result, or the "
                                       "error), nothing else there.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress: no bar on a terminal, no progress "
                                        "lines in a pipe.")]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"kdcli {kdcli.__version__}\n")
        raise typer.Exit(0)


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the version and exit.")] = False) -> None:
    """Compress model checkpoints by knowledge distillation, from one YAML profile.

    Paths written in a profile are relative to the profile's folder; paths given on the command line
    (options and --set values) are relative to the working directory."""


def command(name: str) -> Callable:
    """Register a subcommand whose errors become one clear message (and, with --json, one JSON object
    on stdout) and an exit code; SIGTERM is handled as Ctrl-C."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            _quiet_libraries()
            forget_json()
            try:
                with terminate_as_interrupt():
                    fn(*args, **kwargs)
            except KdcliError as exc:
                _debug_traceback()
                _fail(exc.message, exc.hint, exc.exit_code, kwargs)
            except KeyboardInterrupt as exc:
                code = getattr(exc, "exit_code", 130)
                _fail(_stopped(name, exc, code), _resume_hint(name, exc, kwargs), code, kwargs, style="yellow")
            except (typer.Exit, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
                _debug_traceback()
                _fail(f"{type(exc).__name__}: {str(exc).strip()[:500]}",
                      "this looks like a bug in kdcli; rerun with KDCLI_DEBUG=1 for the traceback", 1, kwargs)
        return app.command(name, epilog=EXIT_CODES)(run)
    return wrap


def _fail(message: str, hint: str | None, code: int, kwargs: dict[str, Any], style: str = "bold red") -> None:
    """One message on stderr; with --json, the same as an object on stdout unless a result is there already."""
    # Messages hold user text (paths, "losses[hidden_mse]"): escaped, or rich eats it as markup.
    label = "error" if code not in (130, 143) else "stopped"
    err.print(f"[{style}]{label}:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        err.print(f"  hint: {hint}", highlight=False, markup=False, soft_wrap=True)
    if kwargs.get("json_") and not json_printed():
        print_json({"error": message, "hint": hint, "exit_code": code})
    raise typer.Exit(code) from None


def _stopped(name: str, exc: BaseException, code: int) -> str:
    cause = "SIGTERM" if code == 143 else "interrupted"
    where = getattr(exc, "stopped_at", None)
    if where is None:
        return f"{name}: {cause}"
    return f"{name}: {cause} at step {where.step}/{where.total} of stage {where.stage}; checkpoint saved"


def _resume_hint(name: str, exc: BaseException, kwargs: dict[str, Any]) -> str | None:
    """The command that continues the job: the same one, with --resume where the command has it."""
    if name not in ("distill", "noisy-student", "compress"):
        return "nothing was written; run the same command again"
    words = ["kdcli", name, str(kwargs.get("profile", "PROFILE"))]
    words += [f"--set {override}" for override in kwargs.get("set_") or []]
    if name == "noisy-student":
        words.append(f"--rounds {kwargs.get('rounds', 1)}")
    if name == "compress":  # the goal given on the command line is the resumed run's goal too
        words += _goal_options(kwargs)
    if not getattr(exc, "stopped_at", None) and name == "distill" and not kwargs.get("resume"):
        return "no step had finished: run the same command again"
    return "resume with: " + " ".join(words + ["--resume"])


def _goal_options(kwargs: dict[str, Any]) -> list[str]:
    words = [f"--{key.replace('_', '-')} {kwargs[key]:g}" for key in ("speedup", "latency_ms", "max_drop",
                                                                       "max_size_mb") if kwargs.get(key) is not None]
    words += [f"--batch {b}" for b in kwargs.get("batch") or []]
    return words + ([f"--max-trials {kwargs['max_trials']}"] if kwargs.get("max_trials") else [])


def _debug_traceback() -> None:
    if os.environ.get("KDCLI_DEBUG") == "1":
        traceback.print_exc(file=sys.stderr)


def _quiet_libraries() -> None:
    warnings.showwarning = _show_warning
    # Through the environment, so that bad input fails fast, before transformers (and torch) load.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if os.environ.get("KDCLI_DEBUG") != "1":
        # torch warns about a refused pickle's protocol before kdcli's own error: one message, not two.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
    if "transformers" in sys.modules:  # already loaded by the caller: the environment is read too late
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


_SHOW_WARNING = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A moved profile field, or data read in part, is one line for the user; other warnings as Python shows them."""
    if issubclass(category, (ProfileDeprecation, DataWarning)):
        err.print(f"warning: {message}", markup=False, highlight=False)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


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
    else:
        report.render(err, str(profile))


@command("init-student")
def init_student_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False,
                     quiet: QuietOpt = False,
                     force: Annotated[bool, typer.Option("--force", help="Write over a student already in "
                                                         "student.path.")] = False) -> None:
    """Derive a smaller student from the teacher: kept layers copied bit for bit."""
    loaded = _load(profile, set_)
    from kdcli.commands.init_student import init_student
    with Progress(err, quiet) as shown:
        report = init_student(loaded, on_event=shown.say, force=force)
    if json_:
        print_json(report.to_json())
    else:
        report.render(err)


@command("distill")
def distill_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
                resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint "
                                                     "(RUN/checkpoints/last.pt).")] = False,
                force: Annotated[bool, typer.Option("--force", help="Replace an earlier run in `output`, once the "
                                                    "profile passed its checks: only what distill writes goes "
                                                    "(profile.lock.yaml, student/, student-best/, checkpoints/, "
                                                    "cache/, metrics, eval.json, export/); pseudo/ and files "
                                                    "kdcli did not write stay.")] = False,
                nproc: Annotated[int, typer.Option(min=1, max=1024, help="Processes (devices) for data-parallel "
                                                   "training, launched through torchrun; 1 to 1024.")] = 1,
                ) -> None:
    """Train the student against the frozen teacher.

    Ctrl-C or SIGTERM: the step in flight finishes, a checkpoint is saved, and --resume continues."""
    loaded = _load(profile, set_)  # a bad profile is one message, not one per process
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_torchrun(nproc))
    from kdcli.commands.distill import distill
    main_rank = _main_rank()
    with Progress(err, quiet or not main_rank) as shown:
        on_step = _follow_steps(shown.task("distill", "step"))
        result = distill(loaded, resume=resume, force=force, on_step=on_step)
    if not main_rank:
        return
    if json_:
        print_json(result.to_json())
    else:
        result.render(err)


def _follow_steps(task: Task) -> Callable[[dict], None]:
    """A metrics.jsonl step record onto the progress bar."""
    def on_step(record: dict) -> None:
        task.update(record["step"], record["total_steps"], name=f"distill [{record['stage']}]",
                    loss=record["loss"], samples_per_s=record["samples_per_s"])
    return on_step


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
    input_: Annotated[Optional[Path], typer.Option("--input", help="Unlabeled data. Default: data.unlabeled.",
                                                   show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(help="labels.jsonl path. Default: RUN/pseudo/labels.jsonl.",
                                                   show_default=False)] = None,
) -> None:
    """Label unlabeled data with the teacher (Noisy Student): JSONL with label, confidence, top-k."""
    loaded = _load(profile, set_)
    from kdcli.commands.pseudo_label import pseudo_label
    with Progress(err, quiet or not _main_rank()) as shown:
        task = shown.task("pseudo-label", "batch")
        result = pseudo_label(loaded, input_, output, on_batch=lambda done, total: task.update(done, total))
    if not _main_rank():
        return
    if json_:
        print_json(result.to_json())
    else:
        result.render(err)


@command("noisy-student")
def noisy_student_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="How many teacher -> student rounds; 1 to 100.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted loop in the round it was "
                                         "in.")] = False,
) -> None:
    """pseudo-label then distill, round after round; each round's student teaches the next."""
    loaded = _load(profile, set_)
    from kdcli.commands.noisy_student import noisy_student
    with Progress(err, quiet) as shown:
        on_step = _follow_steps(shown.task("noisy-student", "step"))
        result = noisy_student(loaded, rounds, resume=resume, on_event=shown.say, on_step=on_step)
    if json_:
        print_json(result.to_json())
    else:
        result.render(err)


@command("evaluate")
def evaluate_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
    model: Annotated[str, typer.Option(help="student, teacher, a checkpoint folder or an .onnx file.")] = "student",
    output: Annotated[Optional[Path], typer.Option(help="Where to write the report. Default: RUN/eval.json.",
                                                   show_default=False)] = None,
    min_retention: Annotated[Optional[float], typer.Option(help="Gate: exit 1 below this retention (student "
                                                           "metric / teacher metric, a fraction). Default: off.",
                                                           show_default=False)] = None,
    min_metric: Annotated[Optional[float], typer.Option(help="Gate: exit 1 below this value of the task's "
                                                        "primary metric (accuracy as a fraction, or cosine). "
                                                        "Default: off.", show_default=False)] = None,
    max_kl: Annotated[Optional[float], typer.Option(help="Gate: exit 1 above this teacher-student KL (nats per "
                                                    "sample). Default: off.", show_default=False)] = None,
) -> None:
    """Teacher and student side by side: accuracy, agreement, retention, size, speed; CI gates.

    Every gate given is judged; eval.json and --json list them under "gates"."""
    loaded = _load(profile, set_)
    from kdcli.commands.evaluate import Gates, check_gates, evaluate
    with Progress(err, quiet or not _main_rank()) as shown:
        tasks = {name: shown.task(f"evaluate {name}", "batch") for name in ("student", "teacher")}
        report = evaluate(loaded, model, output, Gates(min_retention, min_metric, max_kl),
                          on_batch=lambda name, done, total: tasks[name].update(done, total))
    if json_:
        print_json({**report.to_json(), "output_dir": str(loaded.output)})
    else:
        report.render(err)
    check_gates(report)


@command("export")
def export_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
    student: Annotated[Optional[Path], typer.Option(help="Student folder. Default: RUN/student.",
                                                    show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(help="Export folder. Default: RUN/export.",
                                                   show_default=False)] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Parity tolerance, absolute difference of output "
                                                  "values. Default: export.atol, else 1e-4 (transformers) or "
                                                  "1e-3 (timm).", show_default=False)] = None,
    quantize: Annotated[Optional[str], typer.Option(help="int8: also write a dynamically quantized model. "
                                                    "Default: none.", show_default=False)] = None,
    latency: Annotated[bool, typer.Option(help="Measure teacher vs student latency.")] = True,
    latency_seconds: Annotated[float, typer.Option(min=0.0, help="Least timed seconds per latency measurement "
                                                   "(each also runs at least 10 times).")] = 0.5,
    max_drop: Annotated[Optional[float], typer.Option(min=0.0, help="Gate (with --quantize int8): exit 1 when int8 "
                                                      "loses more than this of the metric (accuracy, cosine) on the "
                                                      "eval data. Default: off.", show_default=False)] = None,
) -> None:
    """The student to ONNX, checked against PyTorch in onnxruntime, with a latency report."""
    if quantize not in (None, "int8"):
        raise BadInput(f"--quantize {quantize}: only int8 is supported", hint="use --quantize int8")
    loaded = _load(profile, set_)
    from kdcli.commands.export import export_profile, int8_gate, parity_gate
    with Progress(err, quiet) as shown:
        result = export_profile(loaded, student, output, atol, quantize, latency, on_event=shown.say,
                                latency_seconds=latency_seconds, max_drop=max_drop)
    if json_:
        print_json(result.to_json())
    else:
        result.render(err)
    parity_gate(result.parity)
    int8_gate(result.int8)


@command("compress")
def compress_cmd(
    profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
    speedup: Annotated[Optional[float], typer.Option(min=0.0, help="Goal: teacher p50 / student p50 in "
                                                     "onnxruntime, at every --batch. Default: target.speedup.",
                                                     show_default=False)] = None,
    latency_ms: Annotated[Optional[float], typer.Option(min=0.0, help="Goal: student p50 in onnxruntime (ms), at "
                                                        "every --batch. Default: target.latency_ms.",
                                                        show_default=False)] = None,
    batch: Annotated[Optional[list[int]], typer.Option(min=1, help="Batch size the goal holds at (repeat for "
                                                       "several). Default: target.batch_sizes.",
                                                       show_default=False)] = None,
    max_drop: Annotated[Optional[float], typer.Option(min=0.0, help="Quality gate: the most the primary metric may "
                                                      "fall (accuracy points as a fraction; 1 - cosine for "
                                                      "embeddings). Default: target.max_drop.",
                                                      show_default=False)] = None,
    max_size_mb: Annotated[Optional[float], typer.Option(min=0.0, help="Goal: size in MB of the ONNX file served "
                                                         "(int8 for an int8 candidate). Default: target.max_size_mb.",
                                                         show_default=False)] = None,
    max_trials: Annotated[Optional[int], typer.Option(min=1, help="Shapes distilled before giving up (an int8 twin "
                                                      "shares its shape's training). Default: target.max_trials.",
                                                      show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped compress run.")] = False,
    latency_seconds: Annotated[float, typer.Option(min=0.0, help="Least timed seconds per latency "
                                                   "measurement.")] = 0.5,
) -> None:
    """From the teacher to a served student that meets a speed goal: measure candidates, distil, gate, export.

    Exit 0 when the goal is met, 1 when it is not (the closest candidate named), 2 for bad input."""
    loaded = _load(profile, set_)
    t = loaded.target
    from kdcli.search import Goal
    goal = Goal(speedup=speedup or t.speedup, latency_ms=latency_ms or t.latency_ms,
                batch_sizes=tuple(batch or t.batch_sizes), max_drop=t.max_drop if max_drop is None else max_drop,
                max_size_mb=max_size_mb or t.max_size_mb)
    if goal.speedup is None and goal.latency_ms is None:
        raise BadInput("compress needs a speed goal", hint="pass --speedup X or --latency-ms T (or set target: in "
                       "the profile)")
    from kdcli.commands.compress import compress
    with Progress(err, quiet) as shown:
        report = compress(loaded, goal, max_trials=max_trials or t.max_trials, resume=resume, on_event=shown.say,
                          latency_seconds=latency_seconds, on_step=_follow_steps(shown.task("distill", "step")))
    if json_:
        print_json(report.to_json())
    else:
        report.render(err)
    if not report.met:
        shipped = next((c for c in report.candidates if c.name == report.chosen and c.trained), None)
        verdict = (f"every trial failed the quality gate; the best, {shipped.name} (drop {shipped.drop}), is in "
                   f"{report.output_dir}" if shipped else f"closest: {report.chosen or 'none measured'}")
        raise GateFailed(f"goal not met ({goal.describe()}); {verdict}",
                         hint=f"{report.output_dir}/report.md lists every candidate")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
