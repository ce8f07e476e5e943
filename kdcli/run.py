"""The run folder: every path under a profile's `output:`, named once for every command."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcli.runtime.files import atomic_write_text


@dataclass(frozen=True)
class Run:
    """OUTPUT/: profile.lock.yaml, student/, student-best/, checkpoints/, metrics.jsonl, eval.json,
    export/, pseudo/labels.jsonl, cache/ (teacher and transfer outputs), and round-R/ (a Run of its own)
    for noisy-student."""

    root: Path

    @property
    def lock_file(self) -> Path:
        return self.root / "profile.lock.yaml"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def best(self) -> Path:
        return self.root / "student-best"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def metric_records(self) -> list[dict[str, Any]]:
        """metrics.jsonl, a dict a record; a torn last line (a killed run) is skipped."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def keep_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite metrics.jsonl with the records `keep` accepts (atomically)."""
        if self.metrics.is_file():
            kept = [record for record in self.metric_records() if keep(record)]
            atomic_write_text(self.metrics, "".join(json.dumps(record) + "\n" for record in kept))

    @property
    def metrics_chart(self) -> Path:
        return self.root / "metrics.png"

    @property
    def eval_report(self) -> Path:
        return self.root / "eval.json"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def pseudo_labels(self) -> Path:
        return self.root / "pseudo" / "labels.jsonl"

    @property
    def pseudo_summary(self) -> Path:
        return self.root / "pseudo" / "summary.json"

    @property
    def noisy_state(self) -> Path:
        return self.root / "noisy-student.json"

    @property
    def caches(self) -> Path:
        return self.root / "cache"

    def teacher_cache(self, stage: int) -> Path:
        return self.caches / f"teacher-{stage}.pt"

    def transfer_cache(self, stage: int) -> Path:
        return self.caches / f"transfer-{stage}.pt"

    def replaced_by_distill(self) -> list[Path]:
        """What `distill --force` removes: what a distill run writes here, and the reports on its student
        (eval.json, export/), which would describe a student that no longer exists. Nothing else: not the
        pseudo-labels (an input of distill), not the noisy-student rounds, not a file kdcli did not write."""
        return [self.lock_file, self.student, self.best, self.checkpoint.parent, self.metrics, self.metrics_chart,
                self.caches, self.root / "tensorboard", self.root / "mlruns", self.eval_report, self.export]

    def round(self, r: int) -> Run:
        return Run(self.root / f"round-{r}")

    @property
    def init(self) -> Path:
        """A noisy-student round's freshly initialised student."""
        return self.root / "init"
