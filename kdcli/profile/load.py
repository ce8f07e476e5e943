"""Loading a profile: read, parse safely, apply --set overrides, validate, resolve paths.

Paths written in the profile are relative to the profile file, paths given with --set to the working
directory (as every other command-line path); overrides are applied to the raw YAML before
validation, so they are typed by the same schema.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdcli.errors import ProfileError
from kdcli.profile.messages import describe_errors
from kdcli.profile.parse import parse_yaml, read_text_file
from kdcli.profile.schema import Profile

PATH_FIELDS = [("teacher", "path"), ("student", "path"), ("output",), ("data", "train"), ("data", "eval"),
               ("data", "unlabeled"), ("data", "pseudo"), ("data", "transfer")]


def load_profile(path: str | Path, overrides: list[str] | None = None) -> Profile:
    """Read, override, validate and resolve a profile file. Raises ProfileError on any bad input."""
    path = Path(path)
    text = read_text_file(path)
    try:
        raw, root = parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError(f"{where}: YAML syntax error: {problem}",
                           hint="check indentation and quoting near that line") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping (name:, task:, student:, ...)",
                           hint="see profiles/ for complete examples")
    written = copy.deepcopy(raw)
    for item in overrides or []:
        apply_override(raw, item)
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        overridden = [item.partition("=")[0].strip() for item in overrides or []]
        raise ProfileError(describe_errors(exc, path, root, raw, overridden)) from None
    # Paths in the file are relative to the file; paths given on the command line (--set) to the shell's folder.
    from_cli = {keys for keys in PATH_FIELDS if _lookup(raw, keys) != _lookup(written, keys)}
    resolved = _resolve_paths(profile, path.resolve().parent, path, from_cli)
    if resolved.output.is_file():
        raise ProfileError(f"output: {resolved.output} is a file, not a folder",
                           hint="point `output` at a folder (kdcli creates it) or a new name")
    return resolved


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b.0.c=value` override in place; the value is parsed as YAML."""
    key, sep, value_text = item.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {item!r}: expected KEY=VALUE", hint="for example --set train.lr=3e-5")
    try:
        value = parse_yaml(value_text, f"--set {key.strip()}")[0] if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text  # not YAML (an unbalanced bracket, a tab): the text itself, typed by the schema
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            # isascii: "²".isdigit() is true and int("²") fails; len: int() refuses 4300+ digits
            if not (part.isascii() and part.isdigit() and len(part) < 10) or int(part) >= len(node):
                raise ProfileError(f"--set {key}: {where} is not an index of a list of {len(node)}",
                                   hint=f"use an index from 0 to {len(node) - 1}" if node else "the list is empty")
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ProfileError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section")


def _lookup(raw: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def _resolve_paths(profile: Profile, base: Path, source: Path, from_cli: set[tuple[str, ...]]) -> Profile:
    """Make every path absolute: against the profile's folder, or the working directory for --set values
    (data schemes like sklearn: stay as they are)."""
    data = profile.model_dump()
    for keys in PATH_FIELDS:
        parent = data
        for key in keys[:-1]:
            parent = parent.get(key) or {}
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if value is None or (keys[0] == "data" and _is_scheme(str(value))):
            continue
        field = ".".join(keys)
        try:
            # expanduser raises RuntimeError for ~nosuchuser; resolve, OSError/RuntimeError on odd links
            folder = Path.cwd() if keys in from_cli else base
            resolved = str((folder / Path(value).expanduser()).resolve())
        except (OSError, RuntimeError, ValueError) as exc:
            where = f"--set {field}" if keys in from_cli else f"{source}: {field}"
            raise ProfileError(f"{where}: cannot resolve the path {str(value)[:80]!r} ({exc})",
                               hint="write a plain path") from None
        if len(resolved.encode("utf-8", "surrogatepass")) > 4000:
            raise ProfileError(f"{source}: {field}: the path is longer than the file system allows",
                               hint="shorten it")
        parent[keys[-1]] = resolved
    try:
        resolved_profile = Profile.model_validate(data)
    except ValidationError as exc:  # a resolved path that no longer validates: name it, like any other error
        raise ProfileError(describe_errors(exc, source, None, data)) from None
    resolved_profile.source_file = source.resolve()
    return resolved_profile


def _is_scheme(value: str) -> bool:
    scheme = value.split(":", 1)[0]
    return ":" in value and not Path(value).anchor and scheme.isalpha() and len(scheme) > 1


def profile_json(profile: Profile) -> dict:
    """The resolved profile as plain JSON types (paths as strings)."""
    return profile.model_dump(mode="json", exclude={"source_file"})

