"""Layer maps: which student layer learns from which teacher layer."""

from __future__ import annotations

from kdcli.errors import BadInput


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
