"""One message per validation error: file:line, the field path, what is wrong, a did-you-mean."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdcli.losses.specs import LOSS_SPECS
from kdcli.profile.schema import LOSS_KINDS, Profile


def describe_errors(exc: ValidationError, path: Path, root: yaml.Node | None, raw: Any = None,
                    overridden: list[str] = ()) -> str:
    """One message per error: file:line (or the --set flag that gave the value), field path, what is wrong."""
    lines = []
    for err in exc.errors():
        loc = _field_loc(raw, err["loc"], err["type"])
        field = ".".join(printable(p) for p in loc) or "(top level)"
        flag = next((key for key in overridden
                     if field == key or field.startswith(key + ".") or key.startswith(field + ".")), None)
        line = _line_of(root, loc)
        where = f"--set {flag}" if flag else f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: {field}: {_explain(err)}")
    return "invalid profile\n" + "\n".join(f"  {line}" for line in lines)


def _field_loc(raw: Any, loc: tuple, kind: str) -> list[Any]:
    """pydantic's error location as the user wrote it: parts that are keys or indexes of the input are
    kept, the ones pydantic adds for unions ('hinton', 'dict[int,int]', '[key]') are dropped. Judged by
    the input, not by the part's spelling, so a user key named 'ce' or 'a[1]' is still shown."""
    node, kept = raw, []
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif kind == "missing" and i == len(loc) - 1:
            pass  # the missing field itself: not in the input, and named
        elif raw is not None or _is_union_tag(part):
            continue
        kept.append(part)
    return kept


def printable(part: Any) -> str:
    """A key as shown in a message: control characters (a terminal escape in a key) are shown escaped."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def _quoted(part: Any) -> str:
    text = str(part)
    return f"'{text}'" if text.isprintable() else repr(text)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in LOSS_KINDS or "[" in part or part.startswith("function-"))


def _explain(err: dict) -> str:
    kind, msg, loc = err["type"], err["msg"], err["loc"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"allowed keys: {', '.join(allowed)}"
        return f"unknown key {_quoted(loc[-1])} ({hint})"
    if kind == "union_tag_invalid":
        tag = str(err.get("input", {}).get("kind", "")) if isinstance(err.get("input"), dict) else ""
        guess = difflib.get_close_matches(tag, LOSS_KINDS, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"known kinds: {', '.join(LOSS_KINDS)}"
        return f"unknown loss kind {_quoted(tag)} ({hint})"
    if kind == "union_tag_not_found":
        return f"each loss needs a kind (one of: {', '.join(LOSS_KINDS)})"
    if kind == "missing":
        return "required field is missing"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{msg} (got {shown[:80]})"


def _allowed_keys(loc: tuple) -> list[str]:
    """The field names of the model found at `loc` in the schema."""
    model: Any = Profile
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if isinstance(part, str) and part in LOSS_SPECS:
            model = LOSS_SPECS[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        model = _model_in(field.annotation) if field else None
    return sorted(k for k in (getattr(model, "model_fields", {}) if model else []) if k != "source_file")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the deepest YAML node along `loc` that exists."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                if not _is_union_tag(part):
                    break
                continue
            node, line = match[1], match[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        elif not _is_union_tag(part):
            break
    return line

