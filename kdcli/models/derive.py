"""init-student's student from its teacher, whatever library the teacher comes from: layers kept (chosen, or
ranked by importance) and, for transformers, width pruned by activation importance first (Minitron)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from kdcli.errors import BadInput
from kdcli.models import prune
from kdcli.models.base import Adapter
from kdcli.models.causal_lm import shrink_decoder
from kdcli.models.hf import HFAdapter
from kdcli.models.importance import Importance, measure
from kdcli.models.layers import by_importance, select_layers
from kdcli.models.prune import Kept, Target, layout_of, shape_of
from kdcli.models.shrink import shrink_timm, shrink_transformer
from kdcli.models.timm import TimmAdapter, create

if TYPE_CHECKING:
    from kdcli.profile import StudentInit  # models/ imports no profile/ at run time

Calibration = Callable[[int], Iterable[dict[str, Tensor]]]   # samples wanted -> batches of the job's data


@dataclass
class Derived:
    student: Adapter
    layers: list[int]                        # student layer i came from teacher layer layers[i]
    copied: int                              # tensors copied from the teacher
    pruned: dict[str, Any] | None = None     # sizes before and after width pruning, calibration samples


def derive_student(teacher: Adapter, init: StudentInit, calibration: Calibration | None = None) -> Derived:
    """A decoder or an encoder cut to its kept layers (after width pruning when asked), or a timm student (the
    same architecture cut, or another one seeded where names and shapes match)."""
    pruned = None
    if needs_calibration(init):
        teacher, init, pruned = _prune(teacher, init, calibration)
    if isinstance(teacher, HFAdapter) and teacher.task.causal:
        return Derived(*shrink_decoder(teacher, init), pruned)
    if isinstance(teacher, HFAdapter):
        student, layers, copied = shrink_transformer(teacher, init, teacher.task)
        student.pipeline = teacher.pipeline  # a sentence-transformers teacher's modules, over the student's weights
        return Derived(student, layers, copied, pruned)
    return Derived(*shrink_timm(teacher, init), pruned)  # type: ignore[arg-type]


def needs_calibration(init: StudentInit) -> bool:
    return init.prune is not None or by_importance(init.layers)


def calibration_samples(init: StudentInit) -> int:
    return init.prune.calibration_samples if init.prune is not None else 512


def _prune(teacher: Adapter, init: StudentInit, calibration: Calibration | None
           ) -> tuple[Adapter, StudentInit, dict[str, Any]]:
    """The teacher pruned to the target widths (every layer kept), and the layer selection made explicit."""
    if calibration is None:
        raise BadInput("student.init: pruning ranks by activations on calibration data, and the job has none",
                       hint="set data.train or data.transfer")
    model = teacher.module
    layout, stack = layout_of(model)
    shape = shape_of(model, layout, stack)
    spec = init.prune
    target = Target(spec.heads, spec.ffn, spec.hidden) if spec is not None else Target()
    hf = isinstance(teacher, HFAdapter)
    prune.check_target(shape, layout, target, embedding_output=hf and teacher.task.output == "embedding")
    depth = len(stack.blocks)
    select_layers(init.layers if not by_importance(init.layers) else None, depth)  # bad lists exit 2 now
    importance = measure(model, layout, stack, shape, calibration(calibration_samples(init)),
                         lambda batch: teacher.forward(batch))
    layers = select_layers(init.layers, depth, importance.layers.tolist())
    kept = _kept(importance, target, shape.kv_heads)
    student = teacher
    if target != Target():
        student = _pruned_adapter(teacher, kept)
    after = shape_of(student.module, *layout_of(student.module))
    summary = {"teacher": shape.describe(), "student": after.describe(), "calibration_samples": importance.samples,
               "layer_importance": [round(v, 6) for v in importance.layers.tolist()]}
    return student, init.model_copy(update={"layers": layers}), summary


def _pruned_adapter(teacher: Adapter, kept: Kept) -> Adapter:
    if isinstance(teacher, HFAdapter):
        student = HFAdapter(prune.prune_width(teacher.module, kept).eval(), teacher.tokenizer, teacher.task)
        student.save_dtype, student.pipeline = teacher.save_dtype, teacher.pipeline
        return student
    assert isinstance(teacher, TimmAdapter)
    args = {**teacher.model_args, **prune.pruned_args(teacher.module, kept)}
    model = create(teacher.arch, **args)
    model.load_state_dict(prune.pruned_state(teacher.module, kept), strict=True)
    return TimmAdapter(model.eval(), teacher.arch, args, class_names=teacher.class_names)


def _kept(importance: Importance, target: Target, kv_heads: int) -> Kept:
    depth = len(importance.heads)
    return Kept(
        heads=[prune.keep_heads(importance.heads[i], target.heads, kv_heads) for i in range(depth)]
        if target.heads is not None else None,
        neurons=[prune.keep_top(importance.neurons[i], target.ffn) for i in range(depth)]
        if target.ffn is not None else None,
        hidden=prune.keep_top(importance.hidden, target.hidden) if target.hidden is not None else None)


def fresh_student(architecture: str, args: dict[str, Any]) -> Adapter:
    """A timm architecture with timm's initialisation, no teacher (a first teacher, or a baseline)."""
    return TimmAdapter(create(architecture, **args).eval(), architecture, args)
