"""Layer maps and layer selections: which student layer learns from which teacher layer."""

from __future__ import annotations

from kdcli.errors import BadInput

# The map HF's scripts/extract_distilbert.py uses to cut a 12-layer BERT to 6 layers.
DISTILBERT_LAYERS = [0, 2, 4, 7, 9, 11]


def select_layers(spec: list[int] | str | None, depth: int) -> list[int]:
    """Teacher layers a student keeps: a list, or every-other | distilbert | first:k | last:k | uniform:k."""
    if spec is None:
        spec = "every-other"
    if isinstance(spec, list):
        layers = list(spec)
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
                       hint="use a list of layers, every-other, distilbert, first:k, last:k or uniform:k")
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


def resolve_map(spec: dict[int, int] | str, student_depth: int, teacher_depth: int, *, field: str,
                zero_based: bool = False, allow_zero: bool = True) -> dict[int, int]:
    """Turn a map or strategy into {student_index: teacher_index}, checked against both depths.

    Transformer hidden states are indexed 0..depth (0 = embedding output); timm stages 0..depth-1.
    """
    low = 0 if (zero_based or allow_zero) else 1
    s_high, t_high = (student_depth - 1, teacher_depth - 1) if zero_based else (student_depth, teacher_depth)
    if spec == "last":
        mapping = {s_high: t_high}
    elif spec == "uniform":
        if zero_based:
            mapping = {i: round(i * t_high / max(s_high, 1)) if s_high else t_high for i in range(student_depth)}
        else:
            mapping = {i: round(i * teacher_depth / student_depth) for i in range(1, student_depth + 1)}
    else:
        mapping = {int(k): int(v) for k, v in dict(spec).items()}
    for s, t in mapping.items():
        if not low <= s <= s_high or not low <= t <= t_high:
            unit = "stages" if zero_based else "layers"
            raise BadInput(f"{field}: {s}: {t} is out of range: the student has {student_depth} {unit} and "
                           f"the teacher has {teacher_depth} (indices {low} to {s_high} and {low} to {t_high})",
                           hint="map student indices to teacher indices within both depths, or use uniform/last")
    return mapping
