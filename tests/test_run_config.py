"""`microgpt.run_config`: YAML and JSON run configs, errors that name the key, and `--set` on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microgpt.run_config import (
    RunConfig,
    from_command_line,
    load_run_config,
    merge,
    parse_config,
    parse_set_overrides,
)
from microgpt.zoo import get_preset

YAML = """\
# a run of the names preset, smaller
preset: names
data: names-32k
out: runs/names-small
model:
  n_layer: 2
  n_embd: 32
train:
  lr: 3.0e-4
  max_steps: 200
  betas: [0.9, 0.95]
"""


def test_yaml_and_json_load_to_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(YAML)
    from_yaml = load_run_config(tmp_path / "run.yaml")
    (tmp_path / "run.json").write_text(json.dumps(from_yaml.model_dump()))
    assert load_run_config(tmp_path / "run.json") == from_yaml
    (tmp_path / "run.yml").write_text(YAML)
    assert load_run_config(tmp_path / "run.yml") == from_yaml
    assert from_yaml.data == "names-32k" and from_yaml.out == "runs/names-small"

    preset = from_yaml.to_preset()
    expected = get_preset("names", model={"n_layer": 2, "n_embd": 32}, train=from_yaml.train)
    assert preset == expected
    assert preset.model.n_layer == 2 and preset.train.lr == 3e-4 and preset.train.betas == (0.9, 0.95)
    assert preset.model.n_head == get_preset("names").model.n_head, "unset fields keep the preset's"


def test_a_preset_alone_is_a_config(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text('{"preset": "micro"}')
    config = load_run_config(tmp_path / "run.json")
    assert config == RunConfig(preset="micro") and config.to_preset() == get_preset("micro")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("preset: names\ntrain:\n  lr: fast\n", "train.lr: Input should be a valid number"),
        ("preset: names\nmodel:\n  n_layers: 2\n", "model.n_layers: Extra inputs are not permitted"),
        ("preset: names\ntrain:\n  betas: [0.9]\n", "train.betas"),
        ("preset: names\nmodel:\n  n_embd: 30\n", "model: Value error, n_embd (30) must be divisible"),
        ("preset: names\nepochs: 3\n", "epochs: Extra inputs are not permitted"),
        ("preset: names\nmodel: [1, 2]\n", "model: Input should be a valid dictionary"),
        ("model: {n_layer: 2}\n", "preset: Field required"),
        ("preset: nope\n", "preset: unknown preset 'nope'"),
        ("- preset: names\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("preset: [unclosed\n", "not valid YAML"),
    ],
)
def test_yaml_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_run_config(path)
    line = str(info.value)
    assert line.startswith(f"{path}: ") and message in line and "\n" not in line


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "run.json",
            '{"preset": "names", "train": {"max_steps": "many"}}',
            "train.max_steps: Input should be",
        ),
        ("run.json", '{"preset": "names",}', "not valid JSON"),
        ("run.toml", "preset = 'names'", "must be .yaml, .yml or .json"),
        ("missing.yaml", None, "no such config file"),
    ],
)
def test_json_and_path_errors(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_run_config(path)


def test_parse_set_overrides_types_values_as_json() -> None:
    model, train = parse_set_overrides(
        [
            "model.n_layer=2",
            "train.lr=3e-4",
            "train.betas=[0.9, 0.99]",
            "train.dataset=names",
            "model.bias=true",
        ]
    )
    assert model == {"n_layer": 2, "bias": True}
    assert train == {"lr": 3e-4, "betas": [0.9, 0.99], "dataset": "names"}
    assert parse_set_overrides([]) == ({}, {})


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("model.n_layer", "section.key=value"),
        ("n_layer=2", "section.key=value"),
        ("optim.lr=1", "unknown setting 'optim.lr': the section must be model or train"),
        ("train.learning_rate=1", "unknown setting 'train.learning_rate'; train settings are"),
    ],
)
def test_parse_set_overrides_errors(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_set_overrides([item])


def test_merge_puts_set_overrides_on_top_and_validates() -> None:
    config = parse_config({"preset": "names", "model": {"n_layer": 2}, "train": {"lr": 1e-3, "max_steps": 5}})
    merged = merge(config, ["train.lr=3e-4", "model.n_embd=32"])
    assert merged.train == {"lr": 3e-4, "max_steps": 5} and merged.model == {"n_layer": 2, "n_embd": 32}
    assert merged.to_preset().train.lr == 3e-4
    assert config.train["lr"] == 1e-3, "the loaded config is not changed"
    with pytest.raises(ValueError, match="train.lr: Input should be a valid number"):
        merge(config, ["train.lr=fast"])


def test_from_command_line_lets_the_command_line_win(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    config = from_command_line(config=str(path), preset=None, sets=["train.lr=1e-3"], max_steps=7)
    assert config.train["lr"] == 1e-3 and config.to_preset().train.max_steps == 7
    assert config.data == "names-32k" and config.out == "runs/names-small"
    assert from_command_line(config=str(path), preset="micro").to_preset().name == "micro"
    plain = from_command_line(config=None, preset="micro", sets=["model.n_layer=2"])
    assert plain.to_preset() == get_preset("micro", model={"n_layer": 2})
    with pytest.raises(ValueError, match="--preset NAME"):
        from_command_line(config=None, preset=None)
    with pytest.raises(ValueError, match="unknown preset 'gpt-5'"):
        from_command_line(config=None, preset="gpt-5")
