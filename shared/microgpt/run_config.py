"""Run config files: a preset plus overrides, in YAML or JSON, validated before anything runs.

    microgpt train --config runs/names.yaml --set train.lr=3e-4     # --set wins over the file

    # runs/names.yaml
    preset: names
    data: names-32k            # optional: the preset's data set otherwise
    out: runs/names            # optional
    model: {n_layer: 2}        # GPTConfig fields
    train: {lr: 0.0005, max_steps: 2000}   # TrainConfig fields

Every error is a ValueError of one line that names the file and the key path, e.g.
`runs/names.yaml: train.lr: Input should be a valid number ...` or
`runs/names.yaml: model.n_layers: Extra inputs are not permitted`: the `model` and `train`
overrides are checked by applying them to the preset (`zoo.get_preset`), so a key the
config classes do not have, or a value of the wrong type, is caught at load time.
YAML is read with `yaml.safe_load` (PyYAML), which builds plain data and never objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from microgpt.config import GPTConfig, TrainConfig
from microgpt.zoo import Preset, get_preset

SECTIONS = ("model", "train")
YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)
_Config = TypeVar("_Config", GPTConfig, TrainConfig)


class RunConfig(BaseModel):
    """What a config file holds; `to_preset()` is the validated preset with the overrides applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    data: str | None = None
    out: str | None = None

    def to_preset(self) -> Preset:
        """The preset with `model` and `train` applied; errors name the key, e.g. `train.lr: ...`."""
        try:
            base = get_preset(self.preset)
        except ValueError as e:
            raise ValueError(f"preset: {e}") from None
        model = _updated(base.model, self.model, section="model")
        train = _updated(base.train, self.train, section="train")
        return Preset(base.name, base.source, model, train)


def _updated(config: _Config, overrides: dict[str, Any], *, section: str) -> _Config:
    """`config` with `overrides` applied; a validation error names its keys under `section`."""
    try:
        return config.updated(**overrides)
    except ValidationError as e:
        raise ValueError(describe(e, prefix=section)) from None


def describe(error: ValidationError, *, prefix: str = "") -> str:
    """A pydantic error as one line: `key.path: message; ...`, under `prefix` when given."""
    parts = []
    for e in error.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "") or "value"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_config(raw: Any) -> RunConfig:
    """Validate already-parsed data (a dict) as a RunConfig, overrides included."""
    if not isinstance(raw, dict):
        raise ValueError(f"a run config must be a mapping of keys to values, got {type(raw).__name__}")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(describe(e)) from None
    config.to_preset()
    return config


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a .yaml/.yml or .json run config; any problem is a one-line ValueError."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in YAML_SUFFIXES + JSON_SUFFIXES:
        raise ValueError(f"{p}: a run config must be .yaml, .yml or .json, not {p.suffix or 'no suffix'!r}")
    if not p.is_file():
        raise ValueError(f"{p}: no such config file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read it: {e}") from None
    try:
        raw = _load_yaml(text) if suffix in YAML_SUFFIXES else json.loads(text)
    except ValueError as e:
        raise ValueError(f"{p}: not valid {'YAML' if suffix in YAML_SUFFIXES else 'JSON'}: {e}") from None
    try:
        return parse_config(raw)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def _load_yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(" ".join(str(e).split())) from None


def parse_set_overrides(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`["model.n_layer=2", "train.lr=3e-4"]` -> ({"n_layer": 2}, {"lr": 0.0003}).

    A value is read as JSON when it parses (numbers, booleans, null, lists) and as a string
    otherwise (`train.dataset=names`). The key must be a field of the section's config class.
    The messages are those of `microgpt.train.cli.parse_overrides`, which this can replace.
    """
    from microgpt.config import GPTConfig, TrainConfig

    fields = {"model": GPTConfig.model_fields, "train": TrainConfig.model_fields}
    out: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for item in items:
        key, eq, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not name:
            raise ValueError(f"--set takes section.key=value (e.g. model.n_layer=2), got {item!r}")
        if section not in SECTIONS:
            raise ValueError(f"unknown setting {key!r}: the section must be model or train")
        if name not in fields[section]:
            raise ValueError(
                f"unknown setting {key!r}; {section} settings are: {', '.join(sorted(fields[section]))}"
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[section][name] = value
    return out["model"], out["train"]


def merge(config: RunConfig, set_overrides: Sequence[str]) -> RunConfig:
    """`config` with `--set` overrides on top (they win), validated again; errors name the key."""
    model, train = parse_set_overrides(set_overrides)
    merged = config.model_copy(
        update={"model": {**config.model, **model}, "train": {**config.train, **train}}
    )
    merged.to_preset()
    return merged


def from_command_line(
    *, config: str | None, preset: str | None, sets: Sequence[str] = (), max_steps: int | None = None
) -> RunConfig:
    """What `microgpt train` runs: the config file if given, then `--preset`, `--set` and `--max-steps`.

    The command line wins over the file; the result is validated (`to_preset()` cannot fail).
    """
    if config is not None:
        base = load_run_config(config)
        if preset is not None:
            base = base.model_copy(update={"preset": preset})
    elif preset is not None:
        base = RunConfig(preset=preset)
    else:
        raise ValueError("give a preset (--preset NAME) or a run config (--config FILE)")
    extra = [] if max_steps is None else [f"train.max_steps={max_steps}"]
    return merge(base, [*sets, *extra])
