"""The model card: README.md in every student folder, written with huggingface_hub's ModelCard.

The card's YAML header carries the Hub fields (base_model and license as the teacher's own card states them,
library_name, pipeline_tag, tags) and, under `kdcli:`, every fact kdcli learned about the student: what
init-student kept (the layer map), what distill trained it with (losses, data), its size, and, once
evaluate and export ran, their metrics, retention and speed-up. Each command merges its facts into the card
it finds and renders the page again, so the card grows with the run and never forgets an earlier step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kdcli
from kdcli.runtime.files import atomic_write_text
from kdcli.tasks import TASKS

CARD = "README.md"
LIBRARIES = {"transformers": "transformers", "timm": "timm"}


def update_card(folder: Path, facts: dict[str, Any]) -> Path:
    """Merge `facts` into the card of `folder` (sections replaced whole) and write README.md again."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    merged = {**read_facts(folder), **{k: v for k, v in facts.items() if v is not None}, "version": kdcli.__version__}
    teacher = merged.get("teacher") or {}
    pipeline = merged.get("pipeline")
    task = TASKS.get(merged.get("task", ""))  # a card may name a task this version no longer declares
    data = ModelCardData(
        license=teacher.get("license"), base_model=teacher.get("name"), language=teacher.get("language"),
        library_name="sentence-transformers" if pipeline else LIBRARIES.get(merged.get("family", "")),
        pipeline_tag="sentence-similarity" if pipeline else task.pipeline_tag if task else None,
        tags=["kdcli", "knowledge-distillation", *(["sentence-transformers"] if pipeline else [])],
        kdcli=_plain(merged))
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{render(merged)}")
    atomic_write_text(folder / CARD, str(card))
    return folder / CARD


def read_facts(folder: Path) -> dict[str, Any]:
    """The facts an earlier command stored in the folder's card (empty without a kdcli card)."""
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD
    if not path.is_file():
        return {}
    try:
        facts = ModelCard.load(path).data.to_dict().get("kdcli")
    except Exception:  # noqa: BLE001 - a hand-edited or foreign card: start a fresh one
        return {}
    return dict(facts) if isinstance(facts, dict) else {}


def teacher_facts(path: Path | None) -> dict[str, Any] | None:
    """Who the teacher is, by its own card: name (the card's title, else its config's name, else the folder),
    licence and language as the card's header states them."""
    if path is None:
        return None
    path = Path(path)
    header: dict[str, Any] = {}
    title = None
    card = path / CARD if path.is_dir() else None
    if card is not None and card.is_file():
        from huggingface_hub import ModelCard
        try:
            loaded = ModelCard.load(card)
            header = loaded.data.to_dict()
            title = next((line[2:].strip() for line in loaded.text.splitlines() if line.startswith("# ")), None)
        except Exception:  # noqa: BLE001 - an unreadable card names nothing
            header = {}
    kept = header.get("kdcli") if isinstance(header.get("kdcli"), dict) else {}
    name = header.get("base_model") if kept else None  # a kdcli student as teacher: its own base model
    name = name or title or _config_name(path) or path.name
    return {"name": str(name), "license": header.get("license"),
            "language": header.get("language")}


def _config_name(path: Path) -> str | None:
    try:
        name = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name and not name.startswith(("/", ".")) else None


def _plain(value: Any) -> Any:
    """JSON types only (YAML-safe): tuples to lists, keys to strings, paths to strings."""
    return json.loads(json.dumps(value, default=str))


def render(f: dict[str, Any]) -> str:
    """The card's markdown body from the facts."""
    teacher = f.get("teacher") or {}
    title = f.get("name") or "student"
    lines = [f"# {title}", ""]
    if teacher:
        lines += [f"{_a(f.get('task', ''))} student distilled from **{teacher.get('name')}** with "
                  f"kdcli {f.get('version', '')}."
                  + (f" Licence as the teacher's card states it: {teacher['license']}." if teacher.get("license")
                     else " The teacher's card states no licence."), ""]
    else:
        lines += [f"{_a(f.get('task', ''))} model trained from labels with kdcli {f.get('version', '')}.", ""]
    lines += _usage(f)
    lines += _kept(f) + _training(f) + _size(f) + _evaluation(f) + _export(f)
    return "\n".join(lines).rstrip() + "\n"


def _a(task: str) -> str:
    return f"{'An' if task[:1] in ('a', 'e', 'i', 'o', 'u') else 'A'} {task}"


def _usage(f: dict[str, Any]) -> list[str]:
    if f.get("pipeline"):
        p = f["pipeline"]
        return ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer",
                "model = SentenceTransformer('path/to/this/folder')", "vectors = model.encode(['a sentence'])",
                "```", "", f"Pipeline, as the teacher's: pooling {', '.join(p.get('pooling', []))}, "
                f"normalize {str(p.get('normalize')).lower()}, max_seq_length {p.get('max_seq_length')}.", ""]
    return []


def _kept(f: dict[str, Any]) -> list[str]:
    lines = []
    if f.get("layer_map"):
        pairs = ", ".join(f"{i}←{t}" for i, t in enumerate(f["layer_map"]))
        lines += ["## What was kept", "", f"Student layer ← teacher layer (copied bit for bit): {pairs}."]
        if f.get("dropped"):
            lines += [f"Dropped: {', '.join(f['dropped'])}."]
        if f.get("pruned"):
            before, after = f["pruned"]["teacher"], f["pruned"]["student"]
            sizes = ", ".join(f"{name} {before[name]} → {after[name]}" for name in ("heads", "ffn", "hidden"))
            lines += [f"Width pruned by activation importance (Minitron) on {f['pruned']['calibration_samples']} "
                      f"calibration samples, per layer: {sizes}."]
        lines += [""]
    elif f.get("architecture"):
        lines += ["## What was kept", "", f"A {f['architecture']} student; tensors copied from the teacher where "
                  f"name and shape match: {f.get('copied_tensors', 0)}.", ""]
    if f.get("classes"):
        names = f["classes"]
        lines += [f"Classes ({len(names)}, in output order): {', '.join(map(str, names[:20]))}"
                  + (" ..." if len(names) > 20 else "") + ".", ""]
    return lines


def _training(f: dict[str, Any]) -> list[str]:
    t = f.get("training")
    if not t:
        return []
    lines = ["## Training", ""]
    for loss in t.get("losses", []):
        extra = f", map {loss['map']}" if loss.get("map") else ""
        lines.append(f"- stage {loss.get('stage')}: `{loss.get('kind')}` weight {loss.get('weight')}{extra}")
    data = t.get("data") or {}
    samples = t.get("samples") or {}
    for which in ("train", "eval", "pseudo"):
        if data.get(which):
            count = f" ({samples[which]} samples)" if samples.get(which) is not None else ""
            lines.append(f"- data.{which}: {data[which]}{count}")
    if t.get("steps"):
        lines.append(f"- {t['steps']} optimizer steps, batch size {t.get('batch_size')}, lr {t.get('lr')}")
    return lines + [""]


def _size(f: dict[str, Any]) -> list[str]:
    if f.get("params") is None:
        return []
    lines = ["## Size", "", "| | parameters | size on disk |", "|---|---:|---:|"]
    lines.append(f"| student | {f['params']:,} | {_mb(f.get('size_bytes'))} |")
    if f.get("teacher_params") is not None:
        lines.append(f"| teacher | {f['teacher_params']:,} | {_mb(f.get('teacher_size_bytes'))} |")
    return lines + [""]


def _evaluation(f: dict[str, Any]) -> list[str]:
    e = f.get("eval")
    if not e:
        return []
    lines = ["## Evaluation", "", f"On {e.get('samples')} samples of the eval data (kdcli evaluate).", "",
             "| metric | student | teacher |", "|---|---:|---:|"]
    teacher = e.get("teacher_metrics") or {}
    for name, value in (e.get("metrics") or {}).items():
        lines.append(f"| {name} | {_num(value)} | {_num(teacher.get(name))} |")
    for name, value in (e.get("agreement") or {}).items():
        lines.append(f"| agreement {name} | {_num(value)} | |")
    if e.get("retention") is not None:
        lines.append(f"| retention | {_num(e['retention'])} | |")
    return lines + [""]


def _export(f: dict[str, Any]) -> list[str]:
    x = f.get("export")
    if not x:
        return []
    lines = ["## ONNX", "", f"Parity with PyTorch: {'ok' if x.get('parity_ok') else 'FAILED'} (max abs diff "
             f"{_num(x.get('max_abs_diff'), '.2e')}, atol {x.get('atol')})."]
    for runtime, by_batch in (x.get("speedup") or {}).items():
        if by_batch:
            lines.append(f"Speed-up over the teacher ({runtime}): "
                         + ", ".join(f"batch {b}: {v:.2f}x" for b, v in by_batch.items()) + ".")
    int8 = x.get("int8")
    if int8 and int8.get("metric"):
        lines.append(f"int8 (dynamic quantization): {int8['metric']} {_num(int8.get('int8'))} against fp32's "
                     f"{_num(int8.get('fp32'))}, {_mb(int8.get('size_bytes'))}.")
    for runtime, by_batch in (x.get("speedup_int8") or {}).items():
        if by_batch:
            lines.append(f"int8 speed-up over the teacher ({runtime}): "
                         + ", ".join(f"batch {b}: {v:.2f}x" for b, v in by_batch.items()) + ".")
    return lines + [""]


def _num(value: Any, fmt: str = ".4f") -> str:
    return "-" if value is None else format(float(value), fmt)


def _mb(n: Any) -> str:
    return "-" if n is None else f"{float(n) / 1e6:.1f} MB"


def student_facts(profile: Any, student: Any, folder: Path, classes: Any = None) -> dict[str, Any]:
    """What every card says about a student folder: the job, the model, its classes, pipeline and size."""
    from kdcli.models import dir_size
    pipeline = student.pipeline if profile.task.output == "embedding" else None
    return {"name": profile.name, "task": profile.task.name, "family": student.family,
            "teacher": teacher_facts(profile.teacher.path) if profile.teacher is not None else None,
            "classes": list(classes.names) if classes is not None else None,
            "pipeline": pipeline.describe() if pipeline is not None else None,
            "params": student.param_count(), "size_bytes": dir_size(folder)}


def training_facts(profile: Any, losses: list[dict[str, Any]], samples: dict[str, int], steps: int | None
                   ) -> dict[str, Any]:
    """The training section: losses (with resolved layer maps), data files and sizes, steps."""
    d, t = profile.data, profile.train
    return {"losses": losses, "data": {k: Path(str(v)).name if v and ":" not in str(v) else v
                                       for k, v in (("train", d.train), ("eval", d.eval), ("pseudo", d.pseudo))},
            "samples": samples, "steps": steps, "batch_size": t.batch_size, "lr": t.lr}
