"""How far a candidate's outputs are from the reference, as one number: what narrowing ranks units by.

A sum of continuous distances the budget judges (1 − cosine, 1 − mask IoU, the share of the top-1 margin given up
where the budget judges top-1, and the smallest atol that would pass where the tolerance sets an atol), taken at the
worst output; infinite when a rule that admits no error is broken (a NaN or Inf that the reference does not have, a
mismatch on an output compared exactly). Means, not extremes: the
largest error of one position on one sample is noise for a ranking unless the budget judges it, and it swamped the
means wherever outputs span a range of order one (a probability map's max |Δ| of 0.5 against a 1 − IoU of 0.001).
Top-1 agreement is judged but not ranked by: on the few dozen samples a unit is ranked on, it counts rare events
(one flip in 32 samples of 22 positions is 0.0014), so most units tie at zero, one or two flips and the order among
them is noise (on a CTC recogniser's 21 layers, ranking by flips kept 3 layers within the budget, by cosine 11).
The margin given up (``metrics.margin_losses``) moves continuously with the perturbation that makes positions flip,
and counts a flip as a whole one; the cosine of scores dominated by confident positions barely sees it (on a
CTC recogniser's 41 int8 layers, ranked on 24 samples, the margin's order matched the flips on 90 others at
Spearman 0.81, the cosine's at 0.70). Pure: it reads ``ErrorStats`` and the tolerance they were judged with.
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
            own = v.tolerance.for_output(name)
            atol = s.min_atol if own.atol is not None else 0.0
            margin = s.per_sample.margin_loss if s.per_sample is not None and own.top1 is not None else None
            given_up = float(margin.mean()) if margin is not None and margin.size else 0.0
            total = max(total, (1 - s.cosine) + (1 - (s.iou if s.iou is not None else 1)) + given_up + atol)
    return total
