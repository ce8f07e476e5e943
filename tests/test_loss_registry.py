"""Each loss kind is declared once (kdcli/losses/specs.py): the profile schema, the registry of torch modules,
the docs, the teacher and label needs and the teacher cache's refusals all agree with the declarations."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, get_args

import pytest

from kdcli.errors import BadInput
from kdcli.losses import LOSSES
from kdcli.losses.specs import LOSS_SPECS, LossSpecBase
from kdcli.profile import LOSS_KINDS, LossSpec, Profile
from kdcli.train.cache import refuse_uncacheable

DOCS = Path(__file__).resolve().parents[1] / "docs" / "losses.md"
PADDING_BOUND = {"hidden_mse", "embedding_mse", "attention_mse"}  # the rules from before the declarations


def test_schema_union_and_registry_hold_the_same_kinds():
    union = get_args(get_args(LossSpec)[0])
    assert list(union) == list(LOSS_SPECS.values())
    assert sorted(LOSS_KINDS) == LOSSES.names()
    for kind in LOSS_KINDS:
        assert LOSSES.get(kind).Spec is LOSS_SPECS[kind]
        assert LOSSES.get(kind).kind == kind


def test_every_kind_has_a_section_in_the_docs():
    headings = re.findall(r"^## (\w+): (.*)$", DOCS.read_text(), flags=re.M)
    documented = [name for name, title in headings if "not a `kind`" not in title]
    assert sorted(documented) == sorted(LOSS_KINDS)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_cacheability_is_the_rule_from_before(kind: str):
    spec = LOSS_SPECS[kind]
    assert spec.cacheable_on("text") is (kind not in PADDING_BOUND | {"mlm"})
    assert spec.cacheable_on("image") is (kind != "mlm")


@pytest.mark.parametrize("data", ["text", "image"])
def test_cache_refuses_with_the_same_message(data: str):
    losses = [LOSSES.get(kind) for kind in LOSS_KINDS]
    refused = "attention_mse, embedding_mse, hidden_mse, mlm" if data == "text" else "mlm"
    message = f"train.cache_teacher cannot serve {refused}: the teacher's side of these losses changes"
    with pytest.raises(BadInput, match=re.escape(message)):
        refuse_uncacheable(losses, SimpleNamespace(kind=data))
    refuse_uncacheable([LOSSES.get("hinton"), LOSSES.get("hidden_cosine")], SimpleNamespace(kind=data))


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_teacher_and_labels_follow_the_declaration(kind: str):
    profile = Profile.model_validate({"name": "p", "task": "sequence-classification", "student": {"path": "s"},
                                      "output": "o", "distill": {"losses": [{"kind": kind}]}})
    assert profile.needs_teacher() is (kind not in ("ce", "mlm"))
    assert LOSSES.get(kind).uses_labels is (kind in ("ce", "dkd"))


def test_a_kind_is_declared_once():
    with pytest.raises(ValueError, match="'hinton' is declared twice"):
        type("Again", (LossSpecBase,), {"__annotations__": {"kind": Literal["hinton"]}})
    assert LOSS_SPECS["hinton"].__name__ == "HintonSpec"


def test_the_profile_loads_without_torch():
    script = "import sys, kdcli.profile; sys.exit(any(m.split('.')[0] == 'torch' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0
