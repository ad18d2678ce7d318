"""Learning-rate schedules as multiplicative factors per optimizer step (for ``torch.optim.lr_scheduler.LambdaLR``)."""
from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """factor(step): linear warm-up (step + 1) / warmup_steps for the first ``warmup_steps`` steps, then a half
    cosine from 1 down to ``floor`` (a fraction of the base lr) at ``total_steps``, and ``floor`` after that."""
    if total_steps < 1 or not 0 <= warmup_steps < max(total_steps, 1) or not 0 <= floor <= 1:
        raise ValueError(f"warmup_cosine needs 0 <= warmup_steps < total_steps and 0 <= floor <= 1, got "
                         f"warmup_steps={warmup_steps}, total_steps={total_steps}, floor={floor}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
