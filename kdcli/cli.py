"""The command line: parse, load the profile, call one library function, print, exit.

Human output goes to stderr; `--json` prints one JSON object on stdout. Exit codes: 0 done,
1 a gate failed or the job failed at run time, 2 bad input, 130 interrupted (after saving).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: checkpoints are local files
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from kdcli.console import err, human_bytes, print_json, progress, table  # noqa: E402
from kdcli.errors import KdcliError  # noqa: E402

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
                err.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True, soft_wrap=True)
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
                err.print(f"[bold red]error:[/] {type(exc).__name__}: {str(exc).strip()[:500]}", markup=True,
                          highlight=False, soft_wrap=True)
                err.print("  hint: this looks like a bug in kdcli; rerun with KDCLI_DEBUG=1 for the traceback")
                raise typer.Exit(1) from None
        return app.command(name)(run)
    return wrap


def _debug_traceback() -> None:
    if os.environ.get("KDCLI_DEBUG") == "1":
        traceback.print_exc(file=sys.stderr)


def _quiet_libraries() -> None:
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load(profile: Path, overrides: list[str] | None):  # noqa: ANN202 - kdcli.profile.Profile
    from kdcli.profile import load_profile
    return load_profile(profile, overrides or [])


@command("check")
def check(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Validate a profile; with checkpoints present, run one batch through teacher and student."""
    from kdcli.check import check_profile
    report = check_profile(_load(profile, set_))
    if json_:
        print_json(report)
        return
    err.print(f"[green]profile ok[/]: {profile}")
    for role in ("teacher", "student"):
        info = report.get(role)
        if info and info.get("loaded"):
            err.print(f"  {role}: {info['architecture']} · {info['layers']} layers · {info['params']:,} params · "
                      f"logits {info['logits_shape']}")
        elif info:
            err.print(f"  {role}: {info['status']}")
    for loss in report.get("losses", []):
        err.print(f"  loss {loss['kind']} (weight {loss['weight']})"
                  + (f": map {loss['map']}" if loss.get("map") else ""))


@command("init-student")
def init_student_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Derive a smaller student from the teacher: kept layers copied bit for bit."""
    from kdcli.student import init_student
    report = init_student(_load(profile, set_)).to_json()
    if json_:
        print_json(report)
        return
    t, s = report["teacher"], report["student"]
    err.print(table("init-student", ["", "teacher", "student"], [
        ["architecture", t["architecture"], s["architecture"]],
        ["layers", t["layers"], s["layers"]],
        ["parameters", t["params"], s["params"]],
        ["size on disk", human_bytes(t["size_bytes"]), human_bytes(s["size_bytes"])],
    ]))
    if report["layer_map"]:
        err.print("student layer ← teacher layer: "
                  + ", ".join(f"{i}←{t_}" for i, t_ in enumerate(report["layer_map"])))
    err.print(f"student written to {report['output_dir']} ({report['copied_tensors']} tensors copied)")


def _not_built(name: str, issue: str) -> None:
    err.print(f"[yellow]kdcli {name} is not built yet[/] ({issue}); nothing was run.")
    raise typer.Exit(1)


@command("distill")
def distill_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
                resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
                ) -> None:
    """Train the student against the frozen teacher."""
    from kdcli.train import distill
    with progress(quiet) as bar:
        task = bar.add_task("distill", total=None, info="")

        def on_step(record: dict) -> None:
            bar.update(task, completed=record["step"], total=record["total_steps"],
                       description=f"distill [{record['stage']}]",
                       info=f"loss {record['loss']:.4f} · {record['samples_per_s']:.0f} samples/s")
        summary = distill(_load(profile, set_), resume=resume, on_step=on_step)
    if json_:
        print_json(summary)
        return
    err.print(f"[green]done[/]: student written to {summary['student']}")
    if summary["eval"]:
        err.print(table("eval (student)", ["metric", "value"], summary["eval"].items()))


@command("pseudo-label")
def pseudo_label_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False,
                     quiet: QuietOpt = False) -> None:
    """Label unlabeled data with the teacher (Noisy Student)."""
    _not_built("pseudo-label", "Noisy Student pseudo-labelling")


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
    from kdcli.evaluate import Gates, check_gates, evaluate
    loaded = _load(profile, set_)
    report = evaluate(loaded, model, output)
    if json_:
        print_json({**report, "output_dir": str(loaded.output)})
    else:
        _print_eval(report)
    check_gates(report, Gates(min_retention, min_metric, max_kl))


def _print_eval(report: dict) -> None:
    rows = [[name, report["teacher_metrics"].get(name), value] for name, value in report["metrics"].items()]
    rows += [[f"agreement {k}", None, v] for k, v in report["agreement"].items()]
    rows += [["retention", None, report["retention"]],
             ["parameters", report["params"]["teacher"], report["params"]["student"]],
             ["size", human_bytes(report["size_bytes"]["teacher"]), human_bytes(report["size_bytes"]["student"])],
             ["samples/s", report["samples_per_s"]["teacher"], report["samples_per_s"]["student"]]]
    err.print(table(f"evaluate: {report['model']} on {report['samples']} samples", ["", "teacher", "student"], rows))


@command("export")
def export_cmd(profile: ProfileArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """The student to ONNX, checked in onnxruntime, with a latency report."""
    _not_built("export", "ONNX export and latency")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
