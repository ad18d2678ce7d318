"""lang3d.training.schedules.warmup_cosine against its definition, value by value."""
import math

import pytest

from lang3d.training.schedules import warmup_cosine


def test_warmup_then_half_cosine_to_the_floor():
    f = warmup_cosine(4, 14, floor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for step in range(4, 20):
        t = min((step - 4) / 10, 1.0)
        assert f(step) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * t)) / 2)
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decreasing after the warm-up


def test_no_warmup_and_bad_arguments():
    f = warmup_cosine(0, 2)
    assert f(0) == 1.0 and f(1) == pytest.approx(0.5) and f(2) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(5, 5)
