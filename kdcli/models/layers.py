"""Layer selections: which teacher layers init-student keeps."""

from __future__ import annotations

from collections.abc import Sequence

from kdcli.errors import BadInput

# The map HF's scripts/extract_distilbert.py uses to cut a 12-layer BERT to 6 layers.
DISTILBERT_LAYERS = [0, 2, 4, 7, 9, 11]


def select_layers(spec: list[int] | str | None, depth: int, scores: Sequence[float] | None = None) -> list[int]:
    """Teacher layers a student keeps: a list, or every-other | distilbert | first:k | last:k | uniform:k, or
    importance:k (the k blocks with the highest `scores`: how much each changes its input)."""
    if spec is None:
        spec = "every-other"
    if isinstance(spec, list):
        layers = list(spec)
    elif by_importance(spec):
        layers = _most_important(spec.strip(), depth, scores)
    else:
        layers = _strategy(spec.strip(), depth)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise BadInput(f"student.init.layers: layer {bad[0]} is out of range: the teacher has {depth} layers "
                       f"(0 to {depth - 1})", hint="list teacher layers between 0 and depth - 1")
    if not layers:
        raise BadInput("student.init.layers: keeps no layer", hint="keep at least one teacher layer")
    if len(set(layers)) != len(layers) or layers != sorted(layers):
        raise BadInput(f"student.init.layers: {layers} must be increasing without repeats")
    return layers


def by_importance(spec: object) -> bool:
    """Whether a layer selection needs calibration (importance:k)."""
    return isinstance(spec, str) and spec.strip().startswith("importance:")


def _most_important(spec: str, depth: int, scores: Sequence[float] | None) -> list[int]:
    count = spec.partition(":")[2]
    if not count.isdigit() or not 1 <= int(count) <= depth:
        raise BadInput(f"student.init.layers: '{spec}' must keep between 1 and {depth} layers (importance:k)")
    if scores is None or len(scores) != depth:
        raise BadInput(f"student.init.layers: '{spec}' needs the teacher's layer importance (calibration data)",
                       hint="set data.train (or data.transfer) so init-student can measure it")
    ranked = sorted(range(depth), key=lambda i: (-scores[i], i))
    return sorted(ranked[: int(count)])


def _strategy(spec: str, depth: int) -> list[int]:
    if spec == "every-other":
        return list(range(0, depth, 2))
    if spec == "distilbert":
        if depth != 12:
            raise BadInput(f"student.init.layers: 'distilbert' keeps {DISTILBERT_LAYERS} of a 12-layer teacher; "
                           f"this teacher has {depth}", hint="use every-other or uniform:k")
        return list(DISTILBERT_LAYERS)
    name, _, count = spec.partition(":")
    if name not in ("first", "last", "uniform") or not count.isdigit() or int(count) < 1:
        raise BadInput(f"student.init.layers: unknown strategy '{spec}'",
                       hint="use a list of layers, every-other, distilbert, first:k, last:k, uniform:k or importance:k")
    k = int(count)
    if k > depth:
        raise BadInput(f"student.init.layers: {spec} asks for {k} layers; the teacher has {depth}")
    if name == "first":
        return list(range(k))
    if name == "last":
        return list(range(depth - k, depth))
    if k == 1:
        return [depth - 1]
    return [round(i * (depth - 1) / (k - 1)) for i in range(k)]
