"""Faults during distill: kill -9 at many points (in the middle of a checkpoint write and of a student
save included), a full disk, a NaN, two runs on one folder. The promises: --resume ends with the very
student an uninterrupted run gives (CPU, to 1e-6), no file in the run folder is ever torn, a fault
ends with one clear message and exit 1 or 2, and a second run never overwrites the first.

Kills come from outside, as an operator's or the OOM killer's would: `python -m kdcli distill` runs in
a subprocess and this test watches the run folder (metrics.jsonl lines, temporary files appearing),
freezes the process with SIGSTOP at the chosen point, checks where it stands, then sends SIGKILL.
Nothing in kdcli knows it is being tested.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.errors import BadInput
from kdcli.profile import load_profile
from kdcli.runtime.lock import held_by, run_lock

LOSSES = [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0}, {"kind": "hidden_mse"}]
STEPS = 18  # 3 epochs of 6 batches: evaluations (and student-best saves) at steps 6, 12 and 18
TEMPORARY = (".tmp", ".old-")  # names of in-flight writes (kdcli.runtime.files): the only files allowed to be partial
WIRED = ("needs kdcli.lock.run_lock held by kdcli.train.distill "
         "(see docs/reliability.md, 'Where each guard lives')")


def job(folder: Path, teacher: Path, data: Path, **train) -> Path:
    """A tiny text job whose student keeps dropout (its RNG is in the checkpoint, so resume still matches)."""
    spec = {"name": "faults", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": "student-init", "init": {"layers": [0, 3], "drop": ["token_type_embeddings"]}},
            "data": {"train": str(data), "eval": str(data), "max_length": 16},
            "distill": {"losses": LOSSES},
            "train": {"max_steps": STEPS, "batch_size": 8, "lr": 1e-3, "seed": 11, "log_every": 1,
                      "checkpoint_every": 1, "threads": 1, **train},
            "output": "run"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    if not (folder / "student-init").exists():
        init_student(load_profile(path))
    return path


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """distill() in process applies train.threads: 1 to the whole process; give the next tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_reference(folder: Path, teacher: Path, steps: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """The job's profile and the student of an uninterrupted run (in process, same threads and seed)."""
    data = folder / "train.tsv"
    generator = random.Random(0)
    words = ["the", "a", "film", "movie", "is", "was", "good", "bad", "great", "awful", "fun", "dull", "story", "plot", "acting", "not", "very"]
    data.write_text("sentence\tlabel\n" + "".join(
        f"{' '.join(generator.choices(words, k=generator.randint(3, 11)))}\t{i % 2}\n" for i in range(48)))
    path = job(folder, teacher, data, max_steps=steps)
    summary = distill(load_profile(path, [f"output={path.parent / 'reference'}"]))
    return path, student_weights(Path(summary.student))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bert_cls) -> tuple[Path, dict[str, torch.Tensor]]:
    return make_reference(tmp_path_factory.mktemp("faults"), bert_cls, STEPS)


def student_weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForSequenceClassification.from_pretrained(folder).state_dict()


# --- driving a run from outside ---------------------------------------------------------------------------


def command(profile: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kdcli", "distill", str(profile), "--quiet", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "KDCLI_DEBUG": "1", "PYTHONUNBUFFERED": "1"}


def start(profile: Path, run: Path, *extra: str) -> subprocess.Popen:
    """distill, resumed when the run has a checkpoint (what an operator's restart script does)."""
    resume = ["--resume"] if (run / "checkpoints" / "last.pt").is_file() else []
    return subprocess.Popen(command(profile, *resume, *extra), env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stopped(process: subprocess.Popen) -> None:
    """SIGSTOP, and wait until the kernel says the process is stopped (so the run folder holds still)."""
    os.kill(process.pid, signal.SIGSTOP)
    for _ in range(2000):
        with open(f"/proc/{process.pid}/stat") as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.0005)


def new_steps(metrics: Path, offset: int) -> int:
    """How many step records were appended past `offset` bytes."""
    if not metrics.is_file():
        return 0
    with open(metrics, "rb") as handle:
        handle.seek(offset)
        return sum(1 for line in handle.read().splitlines() if b'"loss"' in line)


def in_flight(run: Path, pid: int, target: str) -> Path | None:
    """The temporary of `target` (checkpoints/last.pt, student, student-best) that process pid is writing."""
    folder = (run / target).parent
    name = f".{Path(target).name}.tmp-{pid}"
    try:
        return folder / name if name in os.listdir(folder) else None
    except FileNotFoundError:
        return None


@dataclass
class Kill:
    """Where to kill: after `steps` new step records, or while `target` is being written, or after `delay` s."""

    steps: int | None = None
    target: str | None = None
    delay: float | None = None

    def describe(self) -> str:
        if self.target:
            return f"mid-write of {self.target}"
        return f"after {self.steps} new steps" if self.steps is not None else f"{self.delay:.1f} s after start"


@dataclass
class Tally:
    kills: list[str] = field(default_factory=list)
    mid_write: list[str] = field(default_factory=list)
    restarts: int = 0
    checked_files: int = 0


def kill_at(process: subprocess.Popen, run: Path, kill: Kill, tally: Tally, timeout: float = 120) -> bool:
    """Kill the process at the chosen point; False when it finished first."""
    metrics = run / "metrics.jsonl"
    offset = metrics.stat().st_size if metrics.is_file() else 0
    begun = time.monotonic()
    while time.monotonic() - begun < timeout:
        if process.poll() is not None:
            return False
        if kill.delay is not None and time.monotonic() - begun >= kill.delay:
            break
        if kill.steps is not None and new_steps(metrics, offset) >= kill.steps:
            break
        if kill.target and in_flight(run, process.pid, kill.target):
            stopped(process)
            if in_flight(run, process.pid, kill.target):  # still mid-write while frozen: kill it there
                tally.mid_write.append(kill.target)
                break
            os.kill(process.pid, signal.SIGCONT)  # the write had just finished: wait for the next one
        time.sleep(0.0002)
    else:
        raise AssertionError(f"no kill point ({kill.describe()}) within {timeout} s")
    process.kill()
    process.wait()
    tally.kills.append(kill.describe())
    return True


# --- what must hold after every kill ----------------------------------------------------------------------


def assert_nothing_torn(run: Path, tally: Tally) -> None:
    """Every file in the run folder, except in-flight temporaries, is whole: it loads."""
    if not run.exists():
        return
    for path in sorted(run.rglob("*")):
        if any(part.startswith(".") and any(t in part for t in TEMPORARY) for part in path.relative_to(run).parts):
            continue  # a temporary (or inside one): the next write of its target removes it
        if path.is_dir():
            if (path / "config.json").is_file() and path.name.startswith("student"):
                AutoModelForSequenceClassification.from_pretrained(path)  # a whole save_pretrained folder
                tally.checked_files += 1
            continue
        if path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".json":
            json.loads(path.read_text())
        tally.checked_files += 1


def assert_no_leftovers(run: Path) -> None:
    leftovers = [str(p.relative_to(run)) for p in run.rglob("*") if any(t in p.name for t in TEMPORARY)]
    assert leftovers == [], "a finished run left temporaries behind"


def assert_every_step_logged(run: Path, steps: int) -> None:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted({x["step"] for x in lines if "loss" in x}) == list(range(1, steps + 1)), "a step's record was lost"
    assert any(x.get("final") for x in lines)


def assert_same_student(run: Path, expected: dict[str, torch.Tensor]) -> None:
    got = student_weights(run / "student")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0, msg=key)


def kill_and_resume(profile: Path, plan: list[Kill], expected: dict[str, torch.Tensor]) -> Tally:
    run = profile.parent / yaml.safe_load(profile.read_text())["output"]
    tally = Tally()
    for kill in plan:
        process = start(profile, run)
        tally.restarts += 1
        if not kill_at(process, run, kill, tally):
            _, err = process.communicate()
            assert process.returncode == 0, err[-3000:]
            break  # it finished before this kill point: the rest of the plan is moot
        assert_nothing_torn(run, tally)
    process = start(profile, run)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert_nothing_torn(run, tally)
    assert_no_leftovers(run)
    assert_every_step_logged(run, yaml.safe_load(profile.read_text())["train"]["max_steps"])
    assert_same_student(run, expected)
    return tally


def fresh(profile: Path, name: str) -> Path:
    """A copy of the job's profile whose run goes to its own folder, beside the same student-init."""
    spec = yaml.safe_load(profile.read_text())
    spec["output"] = name
    path = profile.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_kill_9_at_three_points_then_resume_matches_an_uninterrupted_run(reference):
    profile, expected = reference
    plan = [Kill(steps=2), Kill(target="checkpoints/last.pt"), Kill(target="student")]
    tally = kill_and_resume(fresh(profile, "killed-3"), plan, expected)
    assert len(tally.kills) == 3, tally
    assert "checkpoints/last.pt" in tally.mid_write, "never caught a checkpoint mid-write"
    print(f"\nkill -9: {tally}")


def test_sigterm_saves_then_resume_matches_an_uninterrupted_run(reference):
    """How CI runners and Kubernetes cancel a job: SIGTERM mid-run. The step finishes, a checkpoint is
    saved, one line names the step and the resume command, exit 143; --resume ends with the same student.
    stderr is a pipe (as in a CI log): progress comes as plain lines, read back here."""
    profile, expected = reference
    profile = fresh(profile, "sigterm")
    run = profile.parent / "sigterm"
    process = subprocess.Popen([sys.executable, "-m", "kdcli", "distill", str(profile)],
                               env={**environment(), "KDCLI_DEBUG": "0"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    begun = time.monotonic()
    while new_steps(run / "metrics.jsonl", 0) < 5:
        assert process.poll() is None and time.monotonic() - begun < 120, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stdout == "" and "Traceback" not in stderr
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 5 <= step < STEPS
    lines = stderr.splitlines()
    assert f"stopped: distill: SIGTERM at step {step}/{STEPS} of stage distill; checkpoint saved" in lines, stderr
    assert f"  hint: resume with: kdcli distill {profile} --resume" in lines, stderr
    progress = [line for line in lines if line.startswith("distill [distill] step ")]
    assert progress[0].startswith(f"distill [distill] step 1/{STEPS} (5%) · loss ")
    assert all(" samples/s · elapsed " in line for line in progress), progress
    assert "ETA " in progress[-1]
    resumed = subprocess.run(command(profile, "--resume"), env=environment(), capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_student(run, expected)


@pytest.mark.slow
def test_kill_9_at_many_points_then_resume_matches_an_uninterrupted_run(tmp_path, bert_cls):
    profile, expected = make_reference(tmp_path, bert_cls, 48)  # 8 epochs: room for a dozen kills
    rng = random.Random(8)
    plan = [Kill(delay=rng.uniform(0.5, 3.0)),  # still loading: nothing written yet, the restart is fresh
            Kill(steps=1), Kill(target="checkpoints/last.pt"),
            Kill(target="student-best"),  # the first evaluation (step 6) always saves the best student
            Kill(steps=rng.randint(1, 3)), Kill(target="checkpoints/last.pt"),
            Kill(delay=rng.uniform(0.2, 1.5)),  # a resumed run, killed while it loads its checkpoint
            Kill(steps=rng.randint(1, 3)), Kill(target="checkpoints/last.pt"), Kill(steps=1),
            Kill(target="checkpoints/last.pt"), Kill(target="student")]
    tally = kill_and_resume(fresh(profile, "killed-many"), plan, expected)
    assert len(tally.kills) == len(plan), tally
    assert tally.mid_write.count("checkpoints/last.pt") >= 3 and "student" in tally.mid_write, tally
    print(f"\nkill -9: {tally}")


# --- a full disk, a NaN -----------------------------------------------------------------------------------

LIMITED = ("import os, resource, signal, sys\n"
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not death by signal\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
           "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n")


def test_full_disk_ends_with_a_message_and_keeps_the_last_checkpoint(reference):
    profile, _ = reference
    profile = fresh(profile, "full-disk")
    run = profile.parent / "full-disk"

    class Crash(Exception):
        pass

    def crash_at_3(record: dict) -> None:
        if record["step"] == 3:
            raise Crash

    with pytest.raises(Crash):  # a first session that died after its checkpoint at step 3
        distill(load_profile(profile), on_step=crash_at_3)
    checkpoint = run / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    limit = len(before) // 2  # any file past this size fails to grow: the next checkpoint cannot be written
    done = subprocess.run([sys.executable, "-c", LIMITED.format(limit=limit), *command(profile, "--resume")[1:]],
                          env={**environment(), "KDCLI_DEBUG": "0"}, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode in (1, 2), done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"error: cannot write {checkpoint}: File too large", done.stderr
    assert lines[1].startswith("  hint: free some disk space"), done.stderr
    assert checkpoint.read_bytes() == before  # the last good checkpoint: untouched, and it loads
    assert torch.load(checkpoint, weights_only=True)["step"] == 3
    assert_nothing_torn(run, Tally())
    assert_no_leftovers(run)  # the failed write removed its temporary


def test_nan_stops_the_run_naming_the_step_and_term(reference, bert_cls, tmp_path):
    profile, _ = reference
    broken = tmp_path / "nan-teacher"  # one NaN weight in the classifier: the teacher's logits are NaN
    model = AutoModelForSequenceClassification.from_pretrained(bert_cls)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((bert_cls / name).read_bytes())
    output = tmp_path / "nan-run"
    result = CliRunner().invoke(app, ["distill", str(profile), "--quiet", "--set", f"teacher.path={broken}",
                                      "--set", f"output={output}"], env={"KDCLI_DEBUG": "0"})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: step 1: loss term 'hinton' (#1) is nan"), result.stderr
    assert not (output / "student").exists()


# --- two runs, one folder ---------------------------------------------------------------------------------


def test_run_lock_is_exclusive_and_names_the_holder(tmp_path):
    with run_lock(tmp_path / "out") as lock:
        assert lock == tmp_path / "out" / ".lock" and held_by(tmp_path / "out") == os.getpid()
        with pytest.raises(BadInput, match=rf"out is in use by another kdcli run \(pid {os.getpid()}\)") as info:
            with run_lock(tmp_path / "out"):
                pass
        assert "another folder" in info.value.hint
    assert held_by(tmp_path / "out") is None
    with run_lock(tmp_path / "out"):  # released: the next run takes it
        pass


def test_run_lock_dies_with_its_holder(tmp_path):
    """kill -9 of the holder frees the folder: no stale lock to clean up before --resume."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom kdcli.runtime.lock import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert held_by(tmp_path / "out") == holder.pid
        with pytest.raises(BadInput, match=rf"in use by another kdcli run \(pid {holder.pid}\)"):
            with run_lock(tmp_path / "out"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert held_by(tmp_path / "out") is None
    with run_lock(tmp_path / "out"):
        pass


def test_a_second_distill_on_the_same_folder_refuses_and_overwrites_nothing(reference):
    profile, _ = reference
    profile = fresh(profile, "shared")
    run = profile.parent / "shared"
    first = subprocess.Popen(command(profile, "--set", "train.max_steps=400", "--set", "train.checkpoint_every=50"),
                             env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        begun = time.monotonic()
        while new_steps(metrics, 0) < 3:
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() - begun < 120
            time.sleep(0.01)
        stopped(first)  # hold the first run still while the second tries, so the folder can be compared
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        for extra in ([], ["--resume"]):
            second = CliRunner().invoke(app, ["distill", str(profile), "--quiet", *extra], env={"KDCLI_DEBUG": "0"})
            assert "Traceback" not in second.output
            assert second.exit_code == 2, f"{WIRED}\n{second.output}"
            assert second.stderr.startswith(f"error: {run} is in use by another kdcli run (pid {first.pid})"), \
                f"{WIRED}\n{second.stderr}"
        after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        assert after == before, "the second run changed the first run's files"
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == list(range(1, 401))  # each step once: one writer


# --- the write primitives underneath ----------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_torn_metrics_tail_is_cut_before_the_next_record(tmp_path):
    from kdcli.runtime.files import append_jsonl
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2, "lo')  # a writer killed in the middle of a line
    append_jsonl(metrics, {"step": 2})
    assert [json.loads(x) for x in metrics.read_text().splitlines()] == [{"step": 1}, {"step": 2}]


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    from kdcli.runtime.files import atomic_path, atomic_write_text
    pid = dead_pid()
    stale = [tmp_path / f".last.pt.tmp-{pid}", tmp_path / f".eval.json.{pid}.0123abcd.tmp"]
    live = tmp_path / f".eval.json.{os.getpid()}.0123abcd.tmp"  # this process's: maybe another thread's write
    other = tmp_path / ".eval.json.notes"  # not a temporary name: never touched
    for path in [*stale, live, other]:
        path.write_text("partial")
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_text("whole")
    atomic_write_text(tmp_path / "eval.json", "{}")
    assert [p.exists() for p in stale] == [False, False] and live.exists() and other.exists()
    assert (tmp_path / "last.pt").read_text() == "whole"


def test_a_folder_is_swapped_in_one_step_and_a_half_swap_is_undone(tmp_path):
    from kdcli.runtime.files import _exchange, atomic_path
    target = tmp_path / "student"
    for version in ("one", "two"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(version)
    assert (target / "weights").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    if sys.platform == "linux":
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir(), b.mkdir()
        (a / "x").touch()
        assert _exchange(a, b) and (b / "x").exists() and not (a / "x").exists()
    # A writer without RENAME_EXCHANGE, killed between its two renames: the old folder is put back.
    old = tmp_path / f".student.old-{dead_pid()}"
    os.replace(target, old)
    with atomic_path(target) as tmp:
        assert (target / "weights").read_text() == "two"  # restored before the new write begins
        tmp.mkdir()
        (tmp / "weights").write_text("three")
    assert (target / "weights").read_text() == "three" and not old.exists()


WRITERS = """
import sys
from pathlib import Path
from kdcli.errors import KdcliError
from kdcli.runtime.files import append_jsonl, atomic_path, atomic_write_text
root = Path(sys.argv[1])
for name, write in [("text", lambda: atomic_write_text(root / "big.json", "x" * 20000)),
                    ("jsonl", lambda: append_jsonl(root / "metrics.jsonl", {"x": "y" * 20000})),
                    ("folder", lambda: _folder())]:
    try:
        write()
        print(name, "written")
    except KdcliError as exc:
        print(name, exc.exit_code, exc.message, "|", exc.hint[:28])
"""


def test_every_writer_turns_a_full_disk_into_one_message(tmp_path):
    code = WRITERS.replace("lambda: _folder()", "lambda: _write_folder()").replace(
        "root = Path(sys.argv[1])\n", "root = Path(sys.argv[1])\n\n\ndef _write_folder():\n"
        "    with atomic_path(root / 'student') as tmp:\n        tmp.mkdir()\n"
        "        (tmp / 'model.safetensors').write_bytes(b'x' * 20000)\n\n\n")
    done = subprocess.run([sys.executable, "-c", LIMITED.format(limit=10_000), "-c", code, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    hint = "free some disk space (or rai"
    assert done.stdout.splitlines() == [
        f"text 2 cannot write {tmp_path / 'big.json'}: File too large | {hint}",
        f"jsonl 2 cannot write {tmp_path / 'metrics.jsonl'}: File too large | {hint}",
        f"folder 2 cannot write {tmp_path / 'student'}: File too large | {hint}",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporaries; jsonl: empty
    assert (tmp_path / "metrics.jsonl").read_text() == ""
