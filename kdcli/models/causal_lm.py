"""Decoder language models: init-student's layer cutting for decoders, and the vocabulary rules.

The blocks are found from the module tree (kdcli.models.blocks: Llama's `model.layers`, GPT-2's `transformer.h`,
GPT-NeoX's `gpt_neox.layers`); every other tensor (embeddings, final norm, lm_head) is copied as it is, so tied
embeddings stay tied (Minitron's depth pruning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcli.errors import BadInput, CheckpointError
from kdcli.models.blocks import cut_model, require_stack
from kdcli.models.hf import HFAdapter
from kdcli.models.layers import select_layers

if TYPE_CHECKING:
    from kdcli.profile import StudentInit  # models/ imports no profile/ at run time


def shrink_decoder(teacher: HFAdapter, init: StudentInit) -> tuple[HFAdapter, list[int], int]:
    """A student keeping the chosen decoder layers, renumbered 0..k-1 and copied bit for bit."""
    model = teacher.module
    require_stack(model)
    if init.architecture != "same":
        raise BadInput(f"student.init.architecture: '{init.architecture}' is not a decoder target",
                       hint="use same (the teacher's architecture with fewer layers)")
    if init.drop:
        raise BadInput(f"student.init.drop: {init.drop} applies to BERT-style encoders, not decoders",
                       hint="remove student.init.drop")
    layers = select_layers(init.layers, teacher.depth)
    student = cut_model(model, layers)
    adapter = HFAdapter(student.eval(), teacher.tokenizer, teacher.task)
    adapter.save_dtype = teacher.save_dtype
    return adapter, layers, len(student.state_dict())


# --- vocabularies --------------------------------------------------------------------------------------


def logits_width(adapter: HFAdapter) -> int:
    embeddings = adapter.module.get_output_embeddings()
    return int(embeddings.weight.shape[0]) if embeddings is not None else int(adapter.config.vocab_size)


def shared_vocab(teacher: HFAdapter, student: HFAdapter) -> int:
    """The logits width both models are compared on; refuses vocabularies that are not the same.

    Equal widths with the same tokenizer pass as they are. Widths that differ only by padding rows
    (Qwen2.5: 151,936 vs 152,064) are cut to the narrower one, provided the tokenizer fits in it.
    """
    t_width, s_width = logits_width(teacher), logits_width(student)
    t_vocab, s_vocab = _vocab(teacher), _vocab(student)
    if t_vocab is not None and s_vocab is not None and t_vocab != s_vocab:
        raise CheckpointError(
            f"teacher and student vocabularies differ: teacher {len(t_vocab):,} tokens (logits {t_width:,}), "
            f"student {len(s_vocab):,} tokens (logits {s_width:,}); first difference: "
            f"{_first_difference(t_vocab, s_vocab)}",
            hint="token-level distillation needs the same tokenizer; build the student with kdcli init-student")
    width = min(t_width, s_width)
    used = len(t_vocab or s_vocab or ())
    if used > width:
        raise CheckpointError(
            f"teacher logits {t_width:,} and student logits {s_width:,} wide, but the tokenizer has {used:,} tokens",
            hint="the narrower model cannot score every token; resize its embeddings to the tokenizer")
    return width


def _vocab(adapter: HFAdapter) -> dict[str, int] | None:
    tokenizer = adapter.tokenizer
    return dict(tokenizer.get_vocab()) if tokenizer is not None else None


def _first_difference(a: dict[str, int], b: dict[str, int]) -> str:
    by_id_a = {i: t for t, i in a.items()}
    by_id_b = {i: t for t, i in b.items()}
    for i in range(max(len(by_id_a), len(by_id_b))):
        if by_id_a.get(i) != by_id_b.get(i):
            return f"id {i} is {by_id_a.get(i)!r} in the teacher, {by_id_b.get(i)!r} in the student"
    return "the same ids, different extra tokens"


def align_vocab(teacher: HFAdapter | None, student: HFAdapter) -> None:
    """Cut both models' logits to the shared vocabulary (a no-op when they match exactly)."""
    if teacher is None:
        return
    width = shared_vocab(teacher, student)
    teacher.vocab_limit = student.vocab_limit = width
