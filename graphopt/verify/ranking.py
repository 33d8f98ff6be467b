"""How far a candidate's outputs are from the reference, as one number: what narrowing ranks units by.

A sum of the distances the budget judges (1 − cosine, 1 − top-1 agreement, 1 − mask IoU, the smallest atol that
would pass), taken at the worst output; infinite when a rule that admits no error is broken (a NaN or Inf that the
reference does not have, a mismatch on an output compared exactly). Pure: it reads ``ErrorStats`` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from graphopt.verify.verifier import Verification

__all__ = ["badness"]


def badness(verifications: Iterable[Verification]) -> float:
    """Larger means further from the reference; ``inf`` for a candidate no budget can accept."""
    total = 0.0
    for v in verifications:
        for s in v.stats.values():
            if s.nonfinite_mismatch or (s.exact and s.mismatches):
                return math.inf
            total = max(total, (1 - s.cosine) + (1 - (s.top1 if s.top1 is not None else 1))
                        + (1 - (s.iou if s.iou is not None else 1)) + s.min_atol)
    return total
