"""Profiles from hypothesis: wrong types, missing and extra keys, out-of-range and non-finite numbers,
unicode, huge values, deep nesting, alias bombs, broken YAML text, bad --set overrides.

The property, for every one: load_profile returns a Profile or raises ProfileError (nothing else,
ever), and the message names the field that was broken (or the file, for YAML-level errors). Through
`kdcli check`: exit 0 or 2, never a traceback, one `error:` line, nothing on stdout.

`make test` tries 600+ cases (about 10 s); `make test-slow` ten times as many.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.errors import ProfileError
from kdcli.profile import Profile, load_profile, printable

BASE: dict[str, Any] = {
    "name": "fuzz", "task": "sequence-classification",
    "teacher": {"source": "transformers", "path": "teacher", "num_classes": 2},
    "student": {"path": "student", "init": {"layers": [0, 2], "drop": ["token_type_embeddings"],
                                            "architecture": "same", "model_args": {"drop_path_rate": 0.1},
                                            "copy_weights": True}},
    "data": {"train": "train.tsv", "eval": "sklearn:digits", "text_column": "sentence", "label_column": "label",
             "max_length": 64, "eval_fraction": 0.0, "limit": 100},
    "distill": {"losses": [{"kind": "ce", "weight": 0.1}, {"kind": "hinton", "temperature": 4.0},
                           {"kind": "hidden_mse", "layers": {1: 2, 2: 4}}, {"kind": "dkd", "alpha": 1.0},
                           {"kind": "rkd"}, {"kind": "attention_transfer", "p": 2.0}]},
    "train": {"epochs": 2, "max_steps": 10, "batch_size": 8, "grad_accum": 1, "lr": 5e-5, "weight_decay": 0.01,
              "warmup_ratio": 0.1, "schedule": "linear", "max_grad_norm": 1.0, "precision": "auto",
              "device": "cpu", "compile": False, "seed": 0, "eval_every": 5, "log_every": 1,
              "checkpoint_every": 5, "cache_teacher": False, "threads": 1,
              "noise": {"token_mask": 0.1, "randaugment": False, "randaugment_magnitude": 9}},
    "output": "runs/fuzz",
    "export": {"onnx": {"opset": 18}, "batch_sizes": [1, 8], "atol": 1e-4},
    "pseudo": {"threshold": 0.5, "balance": False, "per_class": 10, "soft": True, "topk": 3, "temperature": 1.0,
               "ratio": 1.0},
}
STAGED = {**copy.deepcopy(BASE), "distill": {"stages": [
    {"name": "intermediate", "epochs": 1, "lr": 1e-3, "losses": [{"kind": "hidden_mse"}, {"kind": "attention_mse"}]},
    {"name": "prediction", "losses": [{"kind": "hinton"}, {"kind": "mlm", "mlm_probability": 0.15}]}]}}
REQUIRED = {("name",), ("task",), ("student",), ("output",), ("student", "path"), ("teacher", "path")}
COUNTS: Counter = Counter()
SLOW = 10  # the slow variant tries this many times more examples


def locations(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key and list index under node, as a path of keys."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append(prefix + (key,))
        out += locations(value, prefix + (key,))
    return out


# --- strategies ---------------------------------------------------------------------------------------

NASTY = ["", " ", "uniform", "last", "~", "null", "yes", "on", "1e-3", "0x10", "nan", ".inf", "-.inf", "1:30",
         "2020-13-45", "\t", "../../etc/passwd", "/", ".", "sklearn:digits", "sklearn:nope", "a\x00b", "\x1b[2J",
         "ce", "hinton", "[key]", "dict[int,int]", "${HOME}", "~nosuchuser/x", "C:\\teacher", "é" * 300,
         "\u202e\u0000", "\ud7ff", "a" * 256, "a/" * 2100]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**80), max_value=10**80),
    st.floats(), st.sampled_from([1e308, -1e308, 5e-324, 2.0**63, -0.0]),
    st.text(max_size=40), st.sampled_from(NASTY),
)
values = st.one_of(
    scalars,
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8) | st.integers(-3, 10), inner, max_size=4), max_leaves=10),
    st.integers(1, 60).map(lambda n: _nested(n)),
    st.integers(1_000, 300_000).map(lambda n: "x" * n),
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict, list[tuple[str, tuple, Any]], dict]:
    """A base profile with one to three mutations: (profile, [(kind, location, value)], base)."""
    base = draw(st.sampled_from([BASE, STAGED]))
    profile = copy.deepcopy(base)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        locs = locations(profile)
        loc = draw(st.sampled_from(locs))
        parent = _get(profile, loc[:-1])
        kind = draw(st.sampled_from(["replace", "replace", "delete", "extra"]))
        if kind == "delete" and isinstance(parent, dict):
            del parent[loc[-1]]
            done.append(("delete", loc, None))
        elif kind == "extra" and isinstance(_get(profile, loc), dict):
            section = _get(profile, loc)
            key = draw(st.text(min_size=1, max_size=12).filter(lambda k, taken=tuple(section): k not in taken))
            section[key] = draw(values)
            done.append(("extra", loc + (key,), section[key]))
        else:
            value = draw(values)
            parent[loc[-1]] = value
            done.append(("replace", loc, value))
    return profile, done, base


def _get(node: Any, loc: tuple) -> Any:
    for part in loc:
        node = node[part]
    return node


def _dump(profile: Any, unicode: bool) -> str:
    return yaml.safe_dump(profile, sort_keys=False, allow_unicode=unicode, width=10**6)


def _field(loc: tuple, unicode: bool = False) -> str:
    if loc and loc[-1] == "kind":  # a broken loss kind is reported on the loss: "distill.losses.1: unknown ..."
        loc = loc[:-1]
    return ".".join(printable(_as_loaded(p, unicode)) for p in loc)


def _as_loaded(part: Any, unicode: bool) -> Any:
    """A key as YAML reads it back: PyYAML folds some characters (NEL, \x85, becomes a space)."""
    if not isinstance(part, str):
        return part
    return next(iter(yaml.safe_load(_dump({part: 0}, unicode))))


BOMB = "bomb: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"b{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7))


@st.composite
def raw_texts(draw: st.DrawFn) -> bytes:
    """YAML text broken below the schema: tabs, cut-offs, stray bytes, aliases, recursion, big numbers."""
    text = _dump(draw(st.sampled_from([BASE, STAGED])), unicode=draw(st.booleans()))
    lines = text.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines)))
    kind = draw(st.sampled_from(["tab", "cut", "insert", "bytes", "bomb", "recursive", "deep", "bigint", "dup",
                                 "bom", "tags", "anchors", "multidoc", "scalar"]))
    COUNTS[f"raw:{kind}"] += 1
    if kind == "tab":
        lines.insert(at, "\t" + draw(st.sampled_from(["lr: 1\n", "x\n", "- a\n"])))
    elif kind == "cut":
        return text[: draw(st.integers(0, len(text)))].encode()
    elif kind == "insert":
        lines.insert(at, draw(st.text(max_size=30)) + draw(st.sampled_from(["\n", "", ": x\n"])))
    elif kind == "bytes":
        return text.encode()[:at * 5] + draw(st.binary(min_size=1, max_size=20)) + text.encode()[at * 5:]
    elif kind == "bomb":  # expanded, 10**6 values; unexpanded, 70 nodes
        lines.insert(at, BOMB)
    elif kind == "recursive":
        lines.append(draw(st.sampled_from(["loop: &l [*l]\n", "loop: &l {a: *l}\n", "loop: &l [1, [2, *l]]\n"])))
    elif kind == "deep":
        n = draw(st.integers(20, 5000))
        lines.append("deep: " + draw(st.sampled_from(["[" * n + "]" * n, "{a: " * n + "1" + "}" * n])) + "\n")
    elif kind == "bigint":
        digits = draw(st.integers(20, 6000))
        field = draw(st.sampled_from(["seed", "max_steps", "batch_size", "log_every"]))
        lines = [ln.replace(f"  {field}: ", f"  {field}: {'9' * digits} #") for ln in lines]
    elif kind == "dup":
        lines.insert(at, lines[min(at, len(lines) - 1)] if lines else "name: x\n")
    elif kind == "bom":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])) + text.encode()
    elif kind == "tags":
        lines.append(draw(st.sampled_from([
            "x: !!python/object/apply:os.system ['touch PWNED']\n", "x: !!python/name:os.system\n",
            "x: !!binary AAAA\n", "x: !!set {a, b}\n", "x: !!omap [a: 1]\n", "x: !!timestamp 2020-13-45\n",
            "x: !custom 1\n", "x: !!int nope\n", "x: !!float nope\n"])))
    elif kind == "anchors":
        lines.append("defaults: &d {lr: 0.1}\ntrain2:\n  <<: *d\n")
    elif kind == "multidoc":
        lines.append("---\nname: second\n")
    else:
        return draw(st.sampled_from([b"", b"null", b"42", b"- a\n- b\n", b"'text'", b"...", b"~", b"[]"]))
    return "".join(lines).encode("utf-8", "surrogatepass")


override_keys = st.one_of(
    st.sampled_from(["train.lr", "train.seed", "distill.losses.0.kind", "distill.losses.9.weight", "name",
                     "teacher.path", "output", "train", "train.lr.x", "distill.losses.-1.kind", "distill.losses.²",
                     "distill.losses." + "9" * 5000, "", ".", "..", "a..b", "student.init.layers.0"]),
    st.lists(st.text(max_size=6), min_size=1, max_size=4).map(".".join),
)
override_values = st.one_of(
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()),
    st.text(max_size=30), st.sampled_from(["[", "{a: ", "*x", "&a [*a]", "\t1", "!!python/name:os.system",
                                            "9" * 5000, "[" * 3000, BOMB.replace("\n", ", ")]),
)


# --- the properties -----------------------------------------------------------------------------------

def _load(path: Path, overrides: list[str] | None = None) -> tuple[Profile | None, str | None]:
    """load_profile's answer: a Profile, or a ProfileError's message. Any other exception fails the test."""
    try:
        return load_profile(path, overrides), None
    except ProfileError as exc:
        assert exc.exit_code == 2
        return None, str(exc)


def _settable(loc: tuple) -> bool:
    return all(str(p) and "." not in str(p) and "=" not in str(p) and str(p).strip() == str(p) for p in loc)


def _section_is_mapping(profile: Any, loc: tuple) -> bool:
    node = profile
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return isinstance(node, dict)


def _check_structured(tmp_path: Path, case: tuple, unicode: bool, via_set: bool) -> str | None:
    profile, done, base = case
    path = tmp_path / "profile.yaml"
    overrides: list[str] = []
    if via_set and all(kind == "replace" and _settable(loc) for kind, loc, _ in done):
        # the same breakage as --set overrides on the intact base, typed by the same schema
        path.write_text(_dump(base, unicode), encoding="utf-8")
        for _, loc, value in done:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()
            overrides.append(".".join(str(p) for p in loc) + "=" + text)
        COUNTS["structured:set"] += 1
    else:
        path.write_text(_dump(profile, unicode), encoding="utf-8")
        COUNTS["structured:file"] += 1
    loaded, message = _load(path, overrides)
    if message is None:
        assert isinstance(loaded, Profile)
        # A required field deleted from a section that a later step replaced (teacher: null) is not missing.
        assert not any(kind == "delete" and loc in REQUIRED and _section_is_mapping(profile, loc[:-1])
                       for kind, loc, _ in done), "a required field was removed"
        COUNTS["accepted"] += 1
        return None
    COUNTS["refused"] += 1
    if overrides and message.startswith("--set"):
        assert any(message.startswith(f"--set {o.partition('=')[0]}") for o in overrides), message
        return message
    yaml_level = not message.startswith("invalid profile")
    if yaml_level:  # nesting, size, aliases: named by file and line
        assert str(path) in message, message
    else:
        assert any(_field(loc, unicode) in message for _, loc, _ in done), (done, message)
        # each line names where the value came from: the file and line, or the --set flag that gave it
        sources = (f"{path}", *(f"--set {o.partition('=')[0]}" for o in overrides))
        assert all(line.strip().startswith(sources) for line in message.splitlines()[1:]), message
    return message


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=mutations(), unicode=st.booleans(), via_set=st.booleans())
def test_structured_profiles_load_or_name_the_field(tmp_path_factory, case, unicode, via_set):
    _check_structured(tmp_path_factory.mktemp("p", numbered=True), case, unicode, via_set)


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(text=raw_texts())
def test_broken_yaml_text_names_the_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("p", numbered=True) / "profile.yaml"
    path.write_bytes(text)
    _, message = _load(path)
    if message is not None:
        assert str(path) in message, message
    assert not (path.parent / "PWNED").exists()


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(items=st.lists(st.one_of(st.tuples(override_keys, override_values).map("=".join),
                                st.text(max_size=20)), min_size=1, max_size=3))
def test_bad_set_overrides_name_the_override_or_field(tmp_path_factory, items):
    path = tmp_path_factory.mktemp("p", numbered=True) / "profile.yaml"
    path.write_text(_dump(BASE, True), encoding="utf-8")
    COUNTS["set:random"] += 1
    _, message = _load(path, items)
    if message is not None:
        flags = tuple(f"--set {item.partition('=')[0].strip()}" for item in items)
        assert message.startswith("--set ") or str(path) in message or any(f in message for f in flags), message


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=mutations(), text=raw_texts(), use_text=st.booleans())
def test_kdcli_check_exits_0_or_2_without_a_traceback(tmp_path_factory, case, text, use_text):
    folder = tmp_path_factory.mktemp("cli", numbered=True)
    path = folder / "profile.yaml"
    if use_text:
        path.write_bytes(text)
    else:
        path.write_text(_dump(case[0], False), encoding="utf-8")
    _, message = _load(path)
    COUNTS["cli"] += 1
    result = CliRunner().invoke(app, ["check", str(path)], env={"KDCLI_DEBUG": "0"})
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), result.output
    if message is not None:  # the library refused it: the command says the same, once, on stderr
        assert result.exit_code == 2 and result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines[0].startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1, result.stderr
        assert message.splitlines()[0][:60] in result.stderr.replace("\n", ""), (message, result.stderr)


@pytest.mark.slow
@settings(max_examples=250 * SLOW, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=mutations(), unicode=st.booleans(), via_set=st.booleans())
def test_structured_profiles_slow(tmp_path_factory, case, unicode, via_set):
    _check_structured(tmp_path_factory.mktemp("p", numbered=True), case, unicode, via_set)


@pytest.mark.slow
@settings(max_examples=250 * SLOW, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(text=raw_texts())
def test_broken_yaml_text_slow(tmp_path_factory, text):
    test_broken_yaml_text_names_the_file.hypothesis.inner_test(tmp_path_factory, text)


@pytest.mark.slow
@settings(max_examples=120 * SLOW, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(items=st.lists(st.one_of(st.tuples(override_keys, override_values).map("=".join),
                                st.text(max_size=20)), min_size=1, max_size=3))
def test_bad_set_overrides_slow(tmp_path_factory, items):
    test_bad_set_overrides_name_the_override_or_field.hypothesis.inner_test(tmp_path_factory, items)


@pytest.mark.slow
@settings(max_examples=40 * SLOW, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=mutations(), text=raw_texts(), use_text=st.booleans())
def test_kdcli_check_slow(tmp_path_factory, case, text, use_text):
    test_kdcli_check_exits_0_or_2_without_a_traceback.hypothesis.inner_test(tmp_path_factory, case, text, use_text)


# --- the cases found by fuzzing, kept as plain regression tests ------------------------------------------

BASE_TEXT = "name: job\ntask: sequence-classification\nteacher: {path: teacher}\nstudent: {path: student}\n" \
            "output: runs/job\n"


@pytest.mark.parametrize(("extra", "needle"), [
    ("train: {seed: " + "9" * 5000 + "}\n", ":6: YAML syntax error: cannot read the value"),
    ("train: {max_steps: " + "9" * 40 + "}\n", "train.max_steps: Input should be less than or equal to"),
    ("distill: {losses: [{kind: dkd, alpha: .inf}]}\n", "distill.losses.0.alpha: Input should be a finite number"),
    ("train: {lr: nan}\n", "train.lr: Input should be a finite number"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("deep: " + "[" * 40 + "]" * 40 + "\n", ":6: values nested more than 32 levels deep"),
    ("loop: &a [*a]\n", ":6: an alias (*) refers to the anchor (&) that contains it"),
    (BOMB, "more than 100,000 values once aliases are expanded"),
    ("on: 2\n", ":6: key 'on' is read by YAML as a boolean"),
    ("~: 2\n", ":6: key '~' is read by YAML as null"),
    ("name: again\n", ":6: duplicate key name (first at line 1)"),
    ("train: {ce: 1}\n", "train.ce: unknown key 'ce'"),
    ("train: {'a[1]': 1}\n", "train.a[1]: unknown key"),
    ("train: {\"\\e[2J\": 1}\n", "train.'\\x1b[2J': unknown key"),
    ("x: !!timestamp 2020-13-45\n", ":6: YAML syntax error: cannot read the value '2020-13-45'"),
    ("teacher: {path: teacher, num_classes: 99999999999999999999}\n", "duplicate key teacher"),
])
def test_fuzz_findings(write_profile, extra, needle):
    path = write_profile(BASE_TEXT + extra)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize(("replace", "needle"), [
    (("runs/job", '"a\\0b"'), "output: Value error, a path cannot contain a NUL byte"),
    (("runs/job", "a" * 300), "output: Value error, path longer than the file system allows"),
    (("runs/job", "''"), "output: Value error, empty path"),
    (("runs/job", "~nosuchuser-kdcli/x"), "output: cannot resolve the path"),
    (("name: job", 'name: "a\\0b"'), "name: Value error, name may not contain control characters"),
    (("{path: teacher}", "{path: teacher, num_classes: 99999999999999999999}"),
     "teacher.num_classes: Input should be less than or equal to 1000000"),
])
def test_fuzz_findings_in_values(write_profile, replace, needle):
    path = write_profile(BASE_TEXT.replace(*replace))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize(("item", "needle"), [
    ("distill.losses.²=1", "is not an index"),
    ("distill.losses." + "9" * 5000 + "=1", "is not an index"),
    ("train=" + "[" * 3000 + "]" * 3000, "--set train: values nested too deeply"),
    ("train=&a [*a]", "--set train:1: an alias (*) refers to the anchor"),
    ("distill.losses.0=1", "the list is empty"),
])
def test_fuzz_findings_in_overrides(write_profile, item, needle):
    path = write_profile(BASE_TEXT + "distill: {losses: []}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path, [item])
    assert needle in str(info.value), str(info.value)


def test_data_schemes_stay_and_other_paths_resolve(write_profile):
    path = write_profile(BASE_TEXT.replace("runs/job", "sklearn:digits") + "data: {train: sklearn:digits}\n")
    profile = load_profile(path)
    assert profile.data.train == "sklearn:digits"
    assert profile.output == path.parent / "sklearn:digits"  # an output folder is a folder, never a scheme


def test_bundled_profiles_pass_the_stricter_loader():
    for path in sorted((Path(__file__).parent.parent / "profiles").glob("*.yaml")):
        load_profile(path)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if COUNTS and os.environ.get("PYTEST_XDIST_WORKER") is None:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
        print(f"\nprofile fuzz: {sum(v for k, v in COUNTS.items() if k in ('accepted', 'refused'))} structured, "
              f"{COUNTS['set:random']} random --set lists, {COUNTS['cli']} through kdcli check; {shown}")
