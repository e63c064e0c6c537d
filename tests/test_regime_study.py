"""The regime study's report sections (repr_jax.studies.regime) on hand-made run records."""
import numpy as np

from repr_jax.studies.regime import (FIG1, calibration_table, fig1_distance, layer_drop_table,
                                     reintroduction_table)
from repr_jax.studies.study import study_rows


def _curve(train, test, epochs=100):
    return [{"epoch": e + 1, "train_accuracy": train(e + 1), "test_accuracy": test(e + 1)} for e in range(epochs)]


def test_fig1_distance_is_the_mean_absolute_gap_in_points():
    exact = _curve(lambda e: 0.80 if e <= 20 else 0.92, lambda e: 0.73)
    assert fig1_distance(exact) == 0.0
    off = _curve(lambda e: 0.90 if e <= 20 else 1.0, lambda e: 0.53)
    # |90-80| + |100-92| + |53-73| + |53-73| over 4 readings
    assert np.isclose(fig1_distance(off), (10 + 8 + 20 + 20) / 4)
    assert fig1_distance(exact[:50]) is None
    assert len(FIG1) == 4


def _drop(round_, counts, shadow, before, after, epoch):
    return {"event": "drop", "round": round_, "epoch": epoch, "criterion": "ortho",
            "layers": [{"layer": f"conv{i}", "filters": 32, "dropped": c, "dropped_by": {"ortho_official": s}}
                       for i, (c, s) in enumerate(zip(counts, shadow))],
            "probe": {"before": {"accuracy": before, "loss": 1.0}, "after": {"accuracy": after, "loss": 2.0}}}


def _reinit(round_, before, after, epoch):
    return {"event": "reinit", "round": round_, "epoch": epoch,
            "probe": {"before": {"accuracy": before, "loss": 1.5}, "after": {"accuracy": after, "loss": 3.0}}}


def _report():
    curves = [_curve(lambda e: 0.5, lambda e: 0.4 + e / 1000) for _ in range(2)]
    events = [[_drop(0, [28, 0, 1], [19, 6, 3], 0.6, 0.5, 21), _reinit(0, 0.55, 0.3, 30)],
              [_drop(0, [26, 2, 1], [17, 8, 3], 0.7, 0.6, 21), _reinit(0, 0.65, 0.5, 30)]]
    repr_row = {"group": "paper-cal", "row": "ortho", "_curves": curves, "_events": events,
                "_drops": [[e for e in ev if e["event"] == "drop"] for ev in events]}
    calib = {"group": "calibration", "row": "official", "_curves": [_curve(lambda e: 0.8, lambda e: 0.7)],
             "_events": [[]], "_drops": [[]]}
    return {"rows": [repr_row, calib]}


def test_reintroduction_table_averages_the_probe_over_seeds_and_reads_the_test_curve():
    table = reintroduction_table(_report())
    line = next(l for l in table.splitlines() if l.startswith("| paper-cal | ortho | 1 "))
    assert "| 2 |" in line
    assert "65.00 → 55.00" in line                       # drop probe: (0.6+0.7)/2 → (0.5+0.6)/2
    assert "60.00 → 40.00 (1.500 → 3.000)" in line      # re-init probe and loss
    # test accuracy at epoch 20 (before the drop before epoch 21), 30 (re-init) and 31
    assert "42.00 → 43.00 → 43.10" in line
    assert "calibration" not in table                    # Standard rows have no events


def test_layer_drop_table_shows_both_readings_per_layer():
    table = layer_drop_table(_report())
    assert "| paper-cal | ortho | 1 | conv0 | 32 | 27 (ortho) | 27 | 18 |" in table
    assert "| paper-cal | ortho | 1 | conv1 | 32 | 1 (ortho) | 1 | 7 |" in table


def test_calibration_table_reads_fig1_columns_and_best_epoch():
    table = calibration_table(_report(), [("paper", [_curve(lambda e: 1.0, lambda e: 0.55)], "elsewhere")])
    line = next(l for l in table.splitlines() if l.startswith("| official "))
    assert "| 80.0 | 80.0 | 70.0 | 70.0 | 70.00 (1) |" in line
    assert "| paper | 1 | 100.0 | 100.0 | 55.0 | 55.0 |" in table


def test_the_regime_study_has_both_regimes_and_every_calibrated_variant():
    rows = {f"{r.group}-{r.name}": r for r in study_rows("regime")}
    assert {"reimpl-standard", "reimpl-ortho", "reimpl-ortho-zero", "paper-cal-standard", "paper-cal-ortho"} <= set(rows)
    assert rows["reimpl-ortho-zero"].args[-1] == "repr.outgoing=zero"
    assert {k for k in rows if k.startswith("calibration-")} == {
        "calibration-official", "calibration-pool2", "calibration-vanilla_pool", "calibration-vanilla"}
    assert all(len(r.seeds) >= 3 for k, r in rows.items() if not k.startswith("calibration-"))
