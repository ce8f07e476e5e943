"""Transfer sets (`data.transfer`): unlabeled inputs on which the student learns the teacher's outputs.

How batches are drawn: each labelled micro-batch brings one transfer batch of
round(data.transfer_ratio × train.batch_size) samples, the next batch of an endless walk over the
transfer set in passes, each pass length-bucketed and reshuffled from (seed, pass). The student sees
it in a forward of its own; only the losses that read no labels are computed on it, and their
weighted sum counts `transfer_ratio` times, so a transfer sample weighs as much as a labelled one.
The teacher's side comes live or from a cache of its own (cache/transfer-S.pt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdcli.data.splits import Split
from kdcli.train.cache import TeacherCache

TRANSFER_SEED = 7_777  # the transfer walk must not replay the labelled order when both files are alike


@dataclass
class TransferFeed:
    split: Split
    batch_size: int
    seed: int
    cache: TeacherCache | None = None
    _order: tuple[int, list[list[int]]] | None = field(default=None, repr=False)

    def indices(self, position: int) -> list[int]:
        """The transfer batch of micro-batch `position` (across ranks): a pure function of it and the seed."""
        per_pass = -(-self.split.size // self.batch_size)
        cycle, k = divmod(position, per_pass)
        if self._order is None or self._order[0] != cycle:  # one pass's order at a time
            order = self.split.order(self.batch_size, shuffle=True, seed=self.seed + TRANSFER_SEED, epoch=cycle)
            self._order = (cycle, order)
        return self._order[1][k]


def transfer_batch_size(ratio: float, batch_size: int) -> int:
    return max(1, round(ratio * batch_size))
