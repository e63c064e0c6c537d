"""``--method jst`` end to end through the CLI: coarse training, search steps recorded in
``pruning.jsonl``, the best sub-network fine-tuned and exported (logits equal to the masked
backbone's), one compilation, a kill mid-search resumed bit-identically, bad settings refused."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import interrupted_at_checkpoint, load_script
from repr_jax.compress import load_exported, logits
from repr_jax.experiment import restore_run
from repr_jax.masks import apply_masks, live_filters
from repr_jax.data.pipeline import normalize
from repr_jax.train import forward

cli = load_script("experiments/cifar.py")
ARGS = ["--model", "convnet", "--depth", "2", "--width", "8", "--batch-norm", "--batch-size", "32",
        "--test-limit", "64", "--quiet", "--method", "jst", "--epochs", "4", "--set", "data.holdout=128",
        "--set", "jst.coarse_epochs=1", "--set", "jst.search_steps=2", "--set", "jst.subnets=4",
        "--set", "jst.val_batches=4", "--set", "jst.reward_batches=1", "--set", "jst.alpha_steps=2"]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def jst_run(tmp_path_factory, tiny_cifar_dir):
    from repr_jax.train import train_step_indexed
    out = tmp_path_factory.mktemp("jst") / "run"
    before = train_step_indexed._cache_size()
    assert cli.main([*ARGS, "--data-dir", str(tiny_cifar_dir), "--out", str(out)]) == 0
    (out / "compilations.txt").write_text(str(train_step_indexed._cache_size() - before))
    return out


def test_search_is_recorded_step_by_step(jst_run):
    metrics = _lines(jst_run / "metrics.jsonl")
    assert [m["phase"] for m in metrics] == ["coarse", "search", "search", "finetune"]
    assert metrics[0]["loss_terms"]["alpha_l2"] > 0 and metrics[1]["loss_terms"]["alpha_l2"] == 0
    events = _lines(jst_run / "pruning.jsonl")
    assert [e["event"] for e in events] == ["search", "search", "select"]
    for step, e in enumerate(events[:2], start=1):
        assert e["round"] == step and e["epoch"] == step + 1
        assert set(e["widths"]) == {"conv0", "conv1"} and all(len(w) == 4 for w in e["widths"].values())
        assert all(1 <= w <= 8 for ws in e["widths"].values() for w in ws)
        assert all(0 < t < 1 for ts in e["thresholds"].values() for t in ts)
        rewards = np.array(e["rewards"])
        np.testing.assert_allclose(rewards, -(np.array(e["val_loss"]) + 0.5 * np.array(e["params_fraction"])),
                                   rtol=1e-5)
        assert e["chosen"] == int(np.argmax(rewards))
    assert events[1]["best_reward"] == max(max(events[0]["rewards"]), max(events[1]["rewards"]))
    assert events[1]["baseline"] == pytest.approx(np.mean(events[0]["rewards"]), rel=1e-5)  # first step's mean
    select = events[2]
    assert select["best_widths"] == events[1]["best_widths"]
    summary = json.loads((jst_run / "summary.json").read_text())
    assert summary["jst"]["best_widths"] == select["best_widths"]
    assert (jst_run / "compilations.txt").read_text() == "1"    # sampled sub-networks: one program
    assert (jst_run / "search.png").stat().st_size > 0


def test_the_best_subnetwork_is_fine_tuned_and_exported_with_equal_logits(jst_run, tiny_cifar_dir):
    config, arch, method, state = restore_run(jst_run)
    best = _lines(jst_run / "pruning.jsonl")[-1]["best_widths"]
    live = live_filters(state.masks, state.layers)
    assert {n: float(jnp.sum(v)) for n, v in live.items()} == best
    assert int(state.method_state["mode"]) == 2
    events = _lines(jst_run / "pruning.jsonl")
    assert method.describe(events[0]).pop().startswith("jst search step 1: rewards mean ")
    assert "% of the parameters) — conv0 " in method.describe(events[-1]).pop()
    _, variables, small_arch = load_exported(jst_run / "export")
    report = json.loads((jst_run / "export" / "export.json").read_text())
    assert report["channels"] == {n: int(w) for n, w in best.items()}
    assert {n: small_arch["channels"].get(n, 8) for n in best} == report["channels"]
    assert report["params_after"] < report["params_before"] and report["max_abs_logit_difference"] < 1e-4
    x = normalize(jax.random.randint(jax.random.key(0), (16, 32, 32, 3), 0, 256).astype(jnp.uint8))
    big, _ = forward(state, apply_masks(state.params, state.masks), x, train=False, method=method)
    np.testing.assert_allclose(logits(small_arch, variables, x), big, atol=1e-4)
    # the gates were folded: the fine-tuned network needs none
    plain = state.apply_fn({"params": apply_masks(state.params, state.masks), "batch_stats": state.batch_stats},
                           x, train=False)
    np.testing.assert_allclose(plain, big, atol=1e-6)


def test_a_run_killed_mid_search_resumes_bit_identically(jst_run, tiny_cifar_dir, tmp_path):
    cut = tmp_path / "cut"
    args = [*ARGS, "--data-dir", str(tiny_cifar_dir), "--out", str(cut)]
    with interrupted_at_checkpoint(2):
        cli.main(args)
    assert cli.main([*args, "--resume"]) == 0
    _, _, _, a = restore_run(jst_run)
    _, _, _, b = restore_run(cut)
    for tree in ("params", "method_state", "method_params", "masks"):
        for x, y in zip(jax.tree_util.tree_leaves(getattr(a, tree)), jax.tree_util.tree_leaves(getattr(b, tree))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _lines(cut / "pruning.jsonl") == _lines(jst_run / "pruning.jsonl")


@pytest.mark.parametrize("sets,message", [
    (["jst.coarse_epochs=1"], "add --set data.holdout=N"),
    (["data.holdout=128", "jst.search_steps=3"], "--epochs must be at least 6"),
    (["data.holdout=128", "jst.gate_scale=linear"], "unknown jst.gate_scale"),
    (["data.holdout=128", "jst.init_threshold=0.99"], "both must exceed 1"),
    (["data.holdout=128", "jst.reward_batches=9"], "exceeds jst.val_batches"),
    (["data.holdout=128", "jst.coarse_epochs=1"], "need data.holdout >= 1024"),
])
def test_bad_jst_settings_exit_2_before_anything_is_written(sets, message, tiny_cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", "convnet", "--depth", "2", "--width", "8", "--batch-norm", "--quiet", "--method", "jst",
            "--epochs", "4", "--data-dir", str(tiny_cifar_dir), "--out", str(out), "--set", "jst.subnets=2",
            *[a for s in sets for a in ("--set", s)]]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err and not out.exists()
