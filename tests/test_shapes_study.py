"""The any-data study's runs are valid command lines, and the study runner finds the CLI."""
from __future__ import annotations

from repr_jax.cli import build_parser, config_from_args
from repr_jax.studies.shapes_study import SCALES, markdown, stages
from repr_jax.studies.study_runner import CIFAR


def test_study_runner_finds_the_cli():
    assert CIFAR.is_file() and CIFAR.name == "cifar.py"


def test_shapes_study_arguments_are_valid_runs(tmp_path):
    assert set(SCALES["gpu"].drop_epochs) == {"digits", "gray28"}
    scale = SCALES["cpu"]
    data = {"gray28": "G.npz", "rgb64": "R.npz", "digits": "D.npz"}
    first, second = stages(scale, tmp_path, data)
    assert len(first) == 2 * (3 + 2 + 4) + 2 and len(second) == 2 * 2
    parser = build_parser("")
    configs = {c.out.split("/")[-1]: c for c in (config_from_args(parser.parse_args(b())) for b in first + second)}
    for c in configs.values():
        c.validate()
    han = configs["han-lenet5-seed1"]
    assert han.init_from.endswith("han-lenet5-base-seed1") and han.method.name == "han" and han.data.dir == "G.npz"
    assert configs["drop-digits-dropconnect-seed0"].model.options() == {"dropconnect": 0.5, "dropconnect_bias": True}
    assert configs["drop-digits-none-seed0"].data.flip is False
    groups = configs["mobilenetv2-li-l1-groups-seed0"]
    assert groups.method.prune_groups and groups.data.dir == "R.npz" and groups.data.train_limit == 128
    assert "mobilenetv2-slimming-seed1" not in configs and "resnet18-slimming-seed1" in configs
    empty = {"seeds": [0], "han": {}, "drop": {}, "structured": {}, "structured_data": {}, "anchors": ["a"]}
    assert markdown(empty, "# t").startswith("# t")
