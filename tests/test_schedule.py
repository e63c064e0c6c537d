"""The RePr schedule as a pure function of the epoch."""
from __future__ import annotations

import pytest

from repr_jax.methods.repr import ReprSchedule


def test_paper_schedule_phases():
    s = ReprSchedule(s1=20, s2=10, iterations=3)
    phases = [s.phase(e) for e in range(100)]
    assert [p.name for p in phases[:30]] == ["full"] * 20 + ["sub"] * 10
    assert [e for e, p in enumerate(phases) if p.drop] == [20, 50, 80]
    assert [e for e, p in enumerate(phases) if p.reinit] == [29, 59, 89]
    assert all(p.name == "full" and p.round == 3 for p in phases[90:])
    assert s.min_epochs == 90


def test_short_schedule_and_validation():
    s = ReprSchedule(1, 1, 2)
    assert [(p.name, p.drop, p.reinit) for p in map(s.phase, range(5))] == [
        ("full", False, False), ("sub", True, True), ("full", False, False), ("sub", True, True),
        ("full", False, False)]
    with pytest.raises(ValueError, match="S1"):
        ReprSchedule(0, 1, 1)
