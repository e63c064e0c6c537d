"""--protocol presets, the held-out split, and the protocol study's report."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import covering_cifar, load_script
from repr_jax.data.pipeline import normalize
from repr_jax.cli import build_parser, config_from_args
from repr_jax.config import RunConfig, apply_overrides
from repr_jax.data import Cifar
from repr_jax.experiment import build_method, build_model, load_run_data
from repr_jax.protocols import PROTOCOLS, protocol_overrides
from repr_jax.population import member_configs
from repr_jax.studies.study import (StudyRow, collect, markdown, population_arguments, run_arguments, study_rows,
                            welch)

cli = load_script("experiments/cifar.py")


def _config(*argv) -> RunConfig:
    return config_from_args(build_parser("test").parse_args([*argv, "--out", "/tmp/unused"]))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "method":
            out.update(_flat(v, f"{prefix}{k}."))
        elif k == "method":
            out.update({f"repr.{m}": x for m, x in v.items() if m != "name"})
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_preset_setting_reaches_the_config(name):
    config = _config("--protocol", name, "--method", "repr")
    config.validate()
    saved = _flat(config.to_dict())
    assert saved["protocol"] == name
    expected = {}
    for key, value, source in PROTOCOLS[name]:   # a later "repr:KEY" entry wins for a RePr run
        assert source
        expected[key.removeprefix("repr:")] = list(value) if isinstance(value, tuple) else value
    for key, value in expected.items():
        assert saved[key] == value, key


def test_reimpl_trains_standard_100_and_repr_110_epochs_as_its_readme_does():
    std, rep = _config("--protocol", "reimpl"), _config("--protocol", "reimpl", "--method", "repr")
    assert std.epochs == 100 and rep.epochs == 110
    assert rep.method.drop_mode == "kernel" and rep.method.reinit == "reimpl" and rep.method.outgoing == "keep"
    assert not any(o.startswith(("repr.", "repr:")) for o in protocol_overrides("reimpl", "standard"))
    assert "epochs=110" in protocol_overrides("reimpl", "repr")


def test_standard_under_a_protocol_gets_the_same_run_without_repr_settings():
    std, rep = _config("--protocol", "official"), _config("--protocol", "official", "--method", "repr")
    a, b = std.to_dict(), rep.to_dict()
    assert a["method"] == {"name": "standard"}
    assert {k: v for k, v in a.items() if k != "method"} == {k: v for k, v in b.items() if k != "method"}
    assert a["epochs"] == 199 + 9 * 20
    assert not any(o.startswith("repr.") for o in protocol_overrides("official", "standard"))


def test_flags_and_set_apply_on_top_of_a_preset():
    config = _config("--protocol", "paper", "--method", "repr", "--lr", "0.02", "--set", "repr.criterion=oracle",
                     "--epochs", "50")
    assert config.optim.learning_rate == 0.02 and config.method.criterion == "oracle" and config.epochs == 50
    assert config.optim.momentum == 0.0 and config.data.holdout == 5000 and not config.data.augment


def test_unknown_protocol_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--protocol", "nope", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err.strip().splitlines()[-1] and "Traceback" not in err
    with pytest.raises(Exception, match="unknown protocol"):
        RunConfig.from_dict(apply_overrides({"out": "x"}, ["protocol=nope"])).validate()


def test_holdout_is_set_aside_and_scored_on():
    tx, ty, vx, vy = covering_cifar(200, 50)
    data = Cifar(tx, ty, vx, vy, tuple("abcdefghij"), "memory")
    config = RunConfig.from_dict(apply_overrides({"out": "x"}, [
        "data.holdout=40", "data.train_limit=100", "method=repr", "repr.criterion=taylor",
        "repr.criterion_batches=2", "batch_size=16", "model.width=4"]))
    run_data = load_run_data(config, data)
    np.testing.assert_array_equal(run_data.held_x, tx[-40:])
    np.testing.assert_array_equal(run_data.held_y, ty[-40:])
    assert len(run_data.train_y) == 100
    train_rows = {row.tobytes() for row in run_data.train_x.reshape(100, -1)}
    assert not train_rows & {row.tobytes() for row in tx[-40:].reshape(40, -1)}
    model = build_model(config)
    method = build_method(config, model, config.architecture(), 100, run_data)
    scored = np.asarray(method.score_data[0]).reshape(-1, 32 * 32 * 3)
    held = np.asarray(normalize(tx[-40:])).reshape(40, -1)     # scored as the model takes them
    nearest = np.abs(scored[:, None, :] - held[None, :, :]).max(-1).min(-1)
    assert scored.shape[0] == 32 and np.all(nearest < 1e-5)    # every scored image is a held-out one


def test_holdout_too_large_is_refused():
    tx, ty, vx, vy = covering_cifar(50, 20)
    config = RunConfig.from_dict(apply_overrides({"out": "x"}, ["data.holdout=50"]))
    with pytest.raises(Exception, match="holdout 50 leaves no training image"):
        load_run_data(config, Cifar(tx, ty, vx, vy, tuple("abcdefghij"), "memory"))


# ----------------------------------------------------------------------------- the study
def test_welch_matches_the_formula():
    a, b = [76.1, 75.2, 77.0], [72.0, 71.1, 73.5, 72.2]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    from scipy import stats
    out = welch(a, b)
    assert out["t"] == pytest.approx(t)
    assert out["p"] == pytest.approx(2 * stats.t.sf(abs(t), dof))
    assert welch([1.0], b) == {}


def test_study_rows_cover_the_issue_and_give_valid_commands(tmp_path):
    gpu = study_rows("gpu")
    names = {(r.group, r.name) for r in gpu}
    for row in ("standard", "ortho", "ortho_official", "ortho-per-layer", "ortho-exclude-first", "weights",
                "taylor", "oracle", "random", "ortho-random-reinit", "ortho-zero-reinit", "ortho-outgoing-keep"):
        assert ("paper", row) in names
    assert {("official", "standard"), ("official", "repr-official"), ("earlier", "standard"),
            ("earlier", "ortho-per-layer"), ("resnet20", "standard"), ("resnet20", "ortho")} <= names
    assert all(len(r.seeds) >= (5 if r.group == "paper" and r.name in ("standard", "ortho") else 3) for r in gpu)
    for row in gpu + study_rows("cpu") + study_rows("regime"):
        args = run_arguments(row, 0, tmp_path, "DATA")
        config = config_from_args(build_parser("t").parse_args(args))
        config.validate()
        assert config.data.dir == "DATA" and config.out.endswith(row.run_name(0))


def test_a_rows_seeds_as_one_population_use_the_same_run_directories(tmp_path):
    row = StudyRow("official", "repr-official", ("--method", "repr"), (2, 3, 4))
    config = config_from_args(build_parser("t").parse_args(population_arguments(row, tmp_path, None)))
    assert config.seeds == 3 and config.seed == 2
    assert [c.out for c in member_configs(config)] == [str(tmp_path / "runs" / row.run_name(s)) for s in (2, 3, 4)]
    assert population_arguments(StudyRow("official", "x", (), (0, 2)), tmp_path, None) is None


def _fake_run(root, name, finals, phases=("full", "sub", "full")):
    for seed, final in enumerate(finals):
        run = root / "runs" / f"{name}-seed{seed}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "completed", "final_test_accuracy": final / 100,
                                                      "best_test_accuracy": final / 100 + 0.01}))
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(
            {"epoch": i + 1, "phase": p, "train_accuracy": 0.5, "test_accuracy": final / 100})
            for i, p in enumerate(phases)) + "\n")


def test_report_means_stds_and_tests_against_standard(tmp_path):
    _fake_run(tmp_path, "g-standard", [70.0, 72.0, 71.0])
    _fake_run(tmp_path, "g-ortho", [75.0, 76.0])
    rows = [StudyRow("g", "standard", (), (0, 1, 2)), StudyRow("g", "ortho", (), (0, 1, 2))]
    report = collect(tmp_path, rows)
    std, ortho = report["rows"]
    assert std["final"]["mean"] == pytest.approx(71.0) and std["final"]["std"] == pytest.approx(1.0)
    assert ortho["final"]["n"] == 2 and ortho["missing_seeds"] == [2]
    assert ortho["best"]["mean"] == pytest.approx(76.5)
    assert ortho["vs_standard"]["delta"] == pytest.approx(4.5)
    assert ortho["vs_standard"]["p"] == pytest.approx(welch([75.0, 76.0], [70.0, 72.0, 71.0])["p"])
    text = markdown(report, "# t")
    assert "| g | ortho | 2 | 75.50 ± 0.71 | 76.50 ± 0.71 | +4.50 |" in text


def test_study_script_reports_finished_runs(tmp_path):
    study = load_script("experiments/protocol_study.py")
    _fake_run(tmp_path, "cpu-official-standard", [52.0, 53.0, 54.0])
    _fake_run(tmp_path, "cpu-official-repr-official", [55.0, 56.0, 57.0])
    assert study.main(["--scale", "cpu", "--out", str(tmp_path), "--report-only"]) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["repr-official"]["vs_standard"]["delta"] == pytest.approx(3.0)
    assert rows["repr-ortho"]["final"] == {"n": 0} and rows["repr-ortho"]["missing_seeds"] == [0, 1, 2]
    assert "curves-cpu-official.png" in report["figures"] and (tmp_path / "curves-cpu-official.png").exists()
    assert study.main(["--scale", "cpu", "--out", str(tmp_path), "--rows", "nope", "--report-only"]) == 2
