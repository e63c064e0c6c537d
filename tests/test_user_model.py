"""The user's own Linen model from the CLI: ``--model FILE.py:FACTORY`` (or
``package.module:FACTORY``) trains, prunes, exports through the factory's channel spec,
resumes and evaluates from another directory; a factory without ``channels`` trains and
prunes and its export says why no smaller module exists; bad references are one line."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from conftest import load_script

MODEL_FILE = textwrap.dedent('''
    import flax.linen as nn


    class MyCNN(nn.Module):
        num_classes: int = 10
        channels: dict | None = None

        @nn.compact
        def __call__(self, x, train: bool = False):
            width = dict(self.channels or {})
            for i, f in enumerate((12, 16)):
                x = nn.Conv(width.get(f"Conv_{i}", f), (3, 3), use_bias=False)(x)
                x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
                x = nn.max_pool(x, (2, 2), (2, 2))
            return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


    def make(num_classes, channels=None):
        return MyCNN(num_classes=num_classes, channels=channels)


    def make_fixed(num_classes):
        return MyCNN(num_classes=num_classes)


    def not_a_module(num_classes):
        return 42
''')
PRUNE = ["--method", "li-l1", "--set", "li-l1.fraction=0.5", "--set", "li-l1.prune_epoch=1", "--quiet"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "mycnn.py"
    path.write_text(MODEL_FILE)
    return path


def test_a_factory_model_trains_prunes_exports_resumes_and_evaluates(model_file, tiny_cifar_dir, tmp_path,
                                                                       monkeypatch, capsys):
    cli = load_script("experiments/cifar.py")
    out = tmp_path / "run"
    monkeypatch.chdir(model_file.parent)                      # a relative reference, as a user types it
    assert cli.main(["--model", "mycnn.py:make", *PRUNE, "--epochs", "2", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["name"] == f"{model_file}:make"               # recorded absolute: found from anywhere
    summary = json.loads((out / "summary.json").read_text())
    export = summary["export"]
    assert export["channels"] == {"Conv_0": 6, "Conv_1": 8}
    assert export["params_after"] < export["params_before"] and export["max_abs_logit_difference"] < 1e-4
    # Conv_0 3→12 and Conv_1 12→16 (3×3, 32×32 then 16×16) and the 8·8·16 → 10 head, halved to 6 and 8
    assert export["flops_after"] == 32 * 32 * 9 * 3 * 6 + 16 * 16 * 9 * 6 * 8 + 8 * 8 * 8 * 10
    from repr_jax.compress import load_exported
    module, variables, small = load_exported(out / "export")
    assert small["channels"] == {"Conv_0": 6, "Conv_1": 8} and module.channels == {"Conv_0": 6, "Conv_1": 8}
    assert variables["params"]["Conv_1"]["kernel"].shape == (3, 3, 6, 8)
    monkeypatch.chdir(tmp_path)                               # elsewhere: resume and evaluate find the file
    assert cli.main(["--model", f"{model_file}:make", *PRUNE, "--epochs", "3", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(out), "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    from repr_jax.evaluate import main as evaluate_main
    capsys.readouterr()
    assert evaluate_main([str(out), "--step", "best"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_a_factory_without_channels_trains_and_says_why_it_cannot_shrink(model_file, tiny_cifar_dir, tmp_path):
    cli = load_script("experiments/cifar.py")
    assert cli.main(["--model", f"{model_file}:make_fixed", *PRUNE, "--epochs", "2", "--data-dir",
                     str(tiny_cifar_dir), "--out", str(tmp_path / "fixed")]) == 0
    summary = json.loads((tmp_path / "fixed" / "summary.json").read_text())
    assert summary["status"] == "completed" and "export" not in summary
    assert "the factory takes no channels, so no smaller model can be built" in summary["export_error"]
    rows = [json.loads(line) for line in (tmp_path / "fixed" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["live_filters"] == 14 < rows[0]["live_filters"] == 28     # pruned all the same


def test_a_package_module_factory(model_file, monkeypatch):
    monkeypatch.syspath_prepend(str(model_file.parent))
    from repr_jax.models import create_model
    module = create_model("mycnn:make", 7, channels={"Conv_0": 5})
    import jax
    import jax.numpy as jnp
    v = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert v["params"]["Conv_0"]["kernel"].shape == (3, 3, 3, 5) and v["params"]["Dense_0"]["kernel"].shape[1] == 7
    sys.modules.pop("mycnn", None)


@pytest.mark.parametrize("reference,message", [
    ("{dir}/missing.py:make", "error: --model '{dir}/missing.py:make': no file {dir}/missing.py"),
    ("{file}:nothing", "error: --model '{file}:nothing': {file} has no callable nothing"),
    ("{file}:not_a_module", "error: --model {file}:not_a_module: the factory returned int, not a flax.linen Module "
                            "(an NNX model: use repr_jax.Pruner in your own loop)"),
    ("no_such_package_xyz:make", "error: --model 'no_such_package_xyz:make': cannot import no_such_package_xyz: "
                                 "No module named 'no_such_package_xyz'"),
    ("{bad}:make", "error: --model '{bad}:make': importing {bad} failed: SyntaxError: "),
])
def test_bad_references_are_one_line(model_file, tiny_cifar_dir, tmp_path, capsys, reference, message):
    bad = tmp_path / "broken.py"
    bad.write_text("def make(:\n")
    fill = {"dir": model_file.parent, "file": model_file, "bad": bad}
    cli = load_script("experiments/cifar.py")
    assert cli.main(["--model", reference.format(**fill), "--epochs", "1", "--data-dir", str(tiny_cifar_dir),
                     "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message.format(**fill))
    assert not (tmp_path / "never").exists()
