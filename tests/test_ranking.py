"""Global / per-layer ranking: exact counts, per-layer minimum, exclusions."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from repr_jax import select_drops


def _layers(rng, sizes, dead=0.0):
    scores = {f"l{i}": rng.normal(size=n).astype(np.float32) for i, n in enumerate(sizes)}
    live = {k: (rng.random(v.shape[0]) >= dead).astype(np.float32) for k, v in scores.items()}
    return scores, live


# Layer layouts and min_keep (static under jit: each pair compiles once) come from small sets;
# scores, dead filters and p vary freely.
LAYOUTS = [(1,), (40,), (2, 17), (3, 1, 8), (8, 40, 2, 17, 1, 3)]


@settings(max_examples=60, deadline=None)
@given(sizes=st.sampled_from(LAYOUTS), p=st.floats(0, 1), min_keep=st.sampled_from([0, 1, 3]),
       seed=st.integers(0, 1000))
def test_global_ranking_drops_exact_count_and_respects_minimum(sizes, p, min_keep, seed):
    rng = np.random.default_rng(seed)
    scores, live = _layers(rng, sizes, dead=0.2)
    new = select_drops(scores, live, p, min_keep=min_keep)
    n_live = sum(int(v.sum()) for v in live.values())
    capacity = sum(max(int(v.sum()) - min_keep, 0) for v in live.values())
    dropped = n_live - sum(int(np.asarray(v).sum()) for v in new.values())
    assert dropped == min(math.floor(p * n_live + 0.5), capacity)
    for k in scores:
        before, after = live[k] > 0, np.asarray(new[k]) > 0
        assert not (after & ~before).any(), "a dead filter came back"
        assert after.sum() >= min(min_keep, before.sum())
    # the dropped filters are the highest-scoring droppable ones
    if dropped:
        dropped_scores = np.concatenate([scores[k][(live[k] > 0) & (np.asarray(new[k]) == 0)] for k in scores])
        kept_scores = np.concatenate([scores[k][np.asarray(new[k]) > 0] for k in scores])
        if min_keep == 0 and kept_scores.size:
            assert dropped_scores.min() >= kept_scores.max()


def test_global_ranking_prefers_the_most_redundant_layer():
    scores = {"a": np.array([0.9, 0.8, 0.7, 0.6], np.float32), "b": np.array([0.1, 0.2, 0.3, 0.4], np.float32)}
    live = {k: np.ones(4, np.float32) for k in scores}
    new = select_drops(scores, live, 0.25)
    np.testing.assert_array_equal(new["a"], [0, 0, 1, 1])
    np.testing.assert_array_equal(new["b"], [1, 1, 1, 1])
    capped = select_drops(scores, live, 0.5, min_keep=1)
    assert int(np.asarray(capped["a"]).sum()) == 1 and int(np.asarray(capped["b"]).sum()) == 3


def test_per_layer_and_exclude():
    scores = {"a": np.arange(10, dtype=np.float32), "b": -np.arange(10, dtype=np.float32)}
    live = {k: np.ones(10, np.float32) for k in scores}
    new = select_drops(scores, live, 0.3, per_layer=True)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(new["a"]) == 0), [7, 8, 9])
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(new["b"]) == 0), [0, 1, 2])
    new = select_drops(scores, live, 0.3, exclude=("a",))
    assert np.asarray(new["a"]).sum() == 10 and np.asarray(new["b"]).sum() == 7


def test_bad_fraction_rejected():
    with pytest.raises(ValueError, match="fraction"):
        select_drops({"a": np.zeros(3)}, {"a": np.ones(3)}, 1.5)
