"""The RePr training schedule as a pure function of the epoch (Prakash et al. 2019, Alg. 1).

Repeat N times: S1 epochs on the full network → drop → S2 epochs on the sub-network →
re-initialise; then the full network until the last epoch. Epoch ``e`` (0-based) of round
``r`` is in the full phase when ``(e − r(S1+S2)) < S1``. The drop happens before the first
sub-network epoch; the re-initialisation after the last one.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str          # "full" or "sub"
    round: int         # 0-based RePr round; N for the final full-network stretch
    drop: bool         # drop filters before this epoch
    reinit: bool       # re-initialise dropped filters after this epoch


@dataclasses.dataclass(frozen=True)
class ReprSchedule:
    s1: int = 20
    s2: int = 10
    iterations: int = 3

    def __post_init__(self):
        if self.s1 < 1 or self.s2 < 1 or self.iterations < 0:
            raise ValueError(f"RePr schedule needs S1 >= 1, S2 >= 1, N >= 0; got "
                             f"S1={self.s1}, S2={self.s2}, N={self.iterations}")

    @property
    def period(self) -> int:
        return self.s1 + self.s2

    @property
    def min_epochs(self) -> int:
        """Epochs needed to complete every round (the last re-initialisation included)."""
        return self.iterations * self.period

    def phase(self, epoch: int) -> Phase:
        r, offset = divmod(epoch, self.period)
        if r >= self.iterations:
            return Phase("full", self.iterations, False, False)
        if offset < self.s1:
            return Phase("full", r, False, False)
        return Phase("sub", r, offset == self.s1, offset == self.period - 1)


def standard_phase(epoch: int) -> Phase:
    """Plain training: always the full network."""
    del epoch
    return Phase("full", 0, False, False)
