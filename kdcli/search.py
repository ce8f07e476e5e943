"""compress's search, without torch: candidate student shapes, the goal, the Pareto front and the choice.

A candidate is a student.init (layers and width pruning) that init-student builds untrained, served in fp32 or
int8 (its twin: the same shape and training, quantized); compress measures its latency in onnxruntime beside the
teacher's, then distils the one with the most capacity that meets the goal. Capacity is the parameters outside
the embedding tables: a student with half the hidden size also halves its embeddings, which hold no layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Goal:
    speedup: float | None = None           # teacher p50 / student p50 in onnxruntime, at every batch size
    latency_ms: float | None = None        # student p50 in onnxruntime, at every batch size
    batch_sizes: tuple[int, ...] = (1,)
    max_drop: float = 0.01                 # on the task's primary metric (points as a fraction; 1 - cosine)
    max_size_mb: float | None = None       # the ONNX file served (int8 for an int8 candidate)

    def describe(self) -> str:
        parts = [f"speed-up ≥ {self.speedup:g}×" if self.speedup else "",
                 f"p50 ≤ {self.latency_ms:g} ms" if self.latency_ms else "",
                 f"size ≤ {self.max_size_mb:g} MB" if self.max_size_mb else ""]
        batches = ", ".join(map(str, self.batch_sizes))
        return f"{' and '.join(p for p in parts if p)} at batch {batches}; drop ≤ {self.max_drop:g}"


@dataclass
class Candidate:
    name: str
    init: dict[str, Any]                   # student.init
    shape: str = ""                        # the folder its student is built and trained in (twins share it)
    int8: bool = False                     # served as dynamic-int8 ONNX
    params: int | None = None
    capacity: int | None = None            # parameters outside the embedding tables
    size_mb: float | None = None
    p50_ms: dict[int, float] = field(default_factory=dict)     # student, onnxruntime, by batch size
    speedup: dict[int, float] = field(default_factory=dict)    # teacher p50 / student p50, onnxruntime
    trained: bool = False
    score: float | None = None             # the primary metric after distillation
    drop: float | None = None
    passed: bool | None = None             # the quality gate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Candidate:
        raw = dict(raw)
        raw["p50_ms"] = {int(k): v for k, v in raw.get("p50_ms", {}).items()}
        raw["speedup"] = {int(k): v for k, v in raw.get("speedup", {}).items()}
        return cls(**raw)

    def __post_init__(self) -> None:
        self.shape = self.shape or self.name

    @property
    def measured(self) -> bool:
        return self.params is not None and bool(self.speedup)

    @property
    def size(self) -> int:
        """What the choice ranks by: capacity where measured, else all parameters."""
        return self.capacity if self.capacity is not None else (self.params or 0)


def shapes(depth: int, width: dict[str, int] | None, heads_with_hidden: bool = True) -> list[Candidate]:
    """Depth (uniform:k for every k below the teacher's), width (MLP at 1/2 and 1/4; heads and, where a head
    is sized hidden / heads, hidden at 1/2) and mixed (2/3 and 1/2 of the layers, MLP at 1/2) students; names
    are folder names."""
    found = [Candidate(f"depth-{k}", {"layers": f"uniform:{k}"}) for k in range(depth - 1, 0, -1)]
    if width is None:
        return found
    everything = list(range(depth))
    ffn, heads, kv = width["ffn"], width["heads"], width["kv_heads"]
    for part, label in ((2, "half"), (4, "quarter")):
        found.append(Candidate(f"ffn-{label}", {"layers": everything, "prune": {"ffn": max(ffn // part, 1)}}))
    if heads >= 2 and (heads // 2) % (kv if kv < heads else 1) == 0:
        prune = {"heads": heads // 2, "ffn": ffn // 2}
        if heads_with_hidden:
            prune["hidden"] = heads // 2 * width["head_dim"]
        found.append(Candidate("heads-half+ffn-half", {"layers": everything, "prune": prune}))
    for kept in sorted({max(round(depth * 2 / 3), 1), max(depth // 2, 1)}, reverse=True):
        if kept < depth:
            found.append(Candidate(f"depth-{kept}+ffn-half", {"layers": f"uniform:{kept}",
                                                             "prune": {"ffn": max(ffn // 2, 1)}}))
    return found


def with_int8(candidates: list[Candidate]) -> list[Candidate]:
    """Each candidate followed by its int8 twin (same student, quantized after training)."""
    return [twin for c in candidates
            for twin in (c, Candidate(f"{c.name}+int8", c.init, shape=c.shape, int8=True))]


def meets(candidate: Candidate, goal: Goal) -> bool:
    """Whether the measured candidate meets the speed and size goal (quality is judged after training)."""
    return shortfall(candidate, goal) <= 0.0


def shortfall(candidate: Candidate, goal: Goal) -> float:
    """How far the candidate is from the goal: 0 when it meets it, else the largest relative miss."""
    misses = [0.0]
    for batch in goal.batch_sizes:
        if goal.speedup is not None:
            misses.append(1.0 - candidate.speedup.get(batch, 0.0) / goal.speedup)
        if goal.latency_ms is not None:
            misses.append(candidate.p50_ms.get(batch, float("inf")) / goal.latency_ms - 1.0)
    if goal.max_size_mb is not None and candidate.size_mb is not None:
        misses.append(candidate.size_mb / goal.max_size_mb - 1.0)
    return max(misses)


def front(candidates: list[Candidate], batch: int) -> list[Candidate]:
    """The Pareto front on (capacity, latency at `batch`): no other candidate is as big and faster."""
    measured = [c for c in candidates if c.measured and batch in c.p50_ms]

    def dominated(c: Candidate) -> bool:
        return any(o is not c and o.size >= c.size and o.p50_ms[batch] <= c.p50_ms[batch]
                   and (o.size > c.size or o.p50_ms[batch] < c.p50_ms[batch]) for o in measured)
    return sorted((c for c in measured if not dominated(c)), key=lambda c: (-c.size, c.int8))


def ranked(candidates: list[Candidate], goal: Goal) -> list[Candidate]:
    """The candidates that meet the goal, the most capacity first (fp32 before its int8 twin): the order compress
    judges them in."""
    return sorted((c for c in candidates if c.measured and meets(c, goal)), key=lambda c: (-c.size, c.int8))


def closest(candidates: list[Candidate], goal: Goal) -> Candidate | None:
    measured = [c for c in candidates if c.measured]
    return min(measured, key=lambda c: (shortfall(c, goal), -c.size, c.int8)) if measured else None
