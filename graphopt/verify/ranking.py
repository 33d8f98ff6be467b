"""How far a candidate's outputs are from the reference, as one number: what narrowing ranks units by.

A sum of continuous distances the budget judges (1 − cosine, 1 − mask IoU, and the smallest atol that would pass
where the tolerance sets an atol), taken at the worst output; infinite when a rule that admits no error is broken (a
NaN or Inf that the reference does not have, a mismatch on an output compared exactly). Means, not extremes: the
largest error of one position on one sample is noise for a ranking unless the budget judges it, and it swamped the
means wherever outputs span a range of order one (a probability map's max |Δ| of 0.5 against a 1 − IoU of 0.001).
Top-1 agreement is judged but not ranked by: on the few dozen samples a unit is ranked on, it counts rare events
(one flip in 32 samples of 22 positions is 0.0014), so most units tie at zero, one or two flips and the order among
them is noise; the cosine of the same scores moves continuously with the perturbation that makes them flip (on a
CTC recogniser's 21 layers, ranking by flips kept 3 layers within the budget, by cosine 11). Pure: it reads
``ErrorStats`` and the tolerance they were judged with.
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
        for name, s in v.stats.items():
            if s.nonfinite_mismatch or (s.exact and s.mismatches):
                return math.inf
            atol = s.min_atol if v.tolerance.for_output(name).atol is not None else 0.0
            total = max(total, (1 - s.cosine) + (1 - (s.iou if s.iou is not None else 1)) + atol)
    return total
