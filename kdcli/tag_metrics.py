"""Entity-level precision, recall and F1 over BIO/IOB2 tags, as seqeval scores them by default.

seqeval's default mode is conlleval's chunking (CoNLL-2000): a chunk starts at B-, and also at an I- whose type
differs from the previous tag's (so `O I-PER` is a PER entity); it ends before O, B-, or a change of type.
Sentences are chunked apart (seqeval puts an O between them). Precision, recall and F1 are micro-averaged over
entities, 0 where nothing was predicted (or nothing was to be found), as seqeval's zero_division default gives.
"""

from __future__ import annotations

from collections.abc import Sequence

Entity = tuple[int, str, int, int]  # (sentence, type, first word, last word)


def _split(tag: str) -> tuple[str, str]:
    """('B', 'PER') for B-PER; ('O', '_') for O (seqeval's placeholder type)."""
    return tag[:1], tag[1:].split("-", 1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def entities(sentence: Sequence[str], index: int = 0) -> list[Entity]:
    """The chunks of one sentence's tags, as seqeval's get_entities finds them."""
    found: list[Entity] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag_name in enumerate([*sentence, "O"]):
        tag, type_ = _split(tag_name)
        if _ends(prev_tag, tag, prev_type, type_):
            found.append((index, prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return found


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over entities, and token (word) accuracy, for sentences of tags."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tags differ in shape")
    true = {e for i, s in enumerate(gold) for e in entities(s, i)}
    guessed = {e for i, s in enumerate(pred) for e in entities(s, i)}
    correct = len(true & guessed)
    precision = correct / len(guessed) if guessed else 0.0
    recall = correct / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    words = sum(len(s) for s in gold)
    same = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": same / words if words else 0.0}
