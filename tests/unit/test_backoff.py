"""Exponential backoff with full jitter: 1 s, 2 s, 4 s ... capped, drawn from [0, ceiling]."""

from __future__ import annotations

import pytest

from bot.base.backoff import backoff_ceiling, full_jitter


def test_ceiling_doubles_and_caps() -> None:
    assert [backoff_ceiling(n, 1.0, 60.0) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_ceiling(10_000, 1.0, 60.0) == 60.0


def test_full_jitter_spans_zero_to_ceiling() -> None:
    assert full_jitter(3, 1.0, 60.0, rand=lambda: 0.0) == 0.0
    assert full_jitter(3, 1.0, 60.0, rand=lambda: 1.0) == 8.0
    assert full_jitter(3, 0.1, 60.0, rand=lambda: 0.5) == pytest.approx(0.4)


def test_negative_attempt_is_an_error() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_ceiling(-1, 1.0, 2.0)
