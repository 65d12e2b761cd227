"""Complete validation of a job spec before it is enqueued, with errors that name the field.

A job that would fail on its first line in a worker (an unknown preset, a typo in an
override, a data set or base model that does not exist) is refused here with a 422 whose
`loc` is the spec field, e.g. `["body", "train", "lr"]`. The zoo and config classes are
the only judges of presets and overrides (the same `with_overrides` the loop applies), and
the registry is asked to resolve base models, so validation and execution cannot disagree.
The result is what the job row records: the resolved base version ("name/3") is pinned at
submission, so a later push to that name does not change what the job runs on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from services.common.errors import ApiError
from services.trainer.schemas import JobSpec

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # the registry's rule


class ResolvesVersions(Protocol):
    def resolve(self, ref: str) -> Any: ...


class FindsDatasets(Protocol):
    def find_dataset(self, ref: str) -> Any: ...


@dataclass(frozen=True)
class ResolvedSpec:
    """The job row's fields derived from a valid spec."""

    preset: str | None
    total_steps: int | None
    dataset: str | None  # a built-in name or an uploaded data set's id
    dataset_sha256: str | None  # known now for uploads; built-ins are hashed by the worker
    base_model: str | None  # "name/3"
    output_model: str | None


def invalid(loc: list[str | int], msg: str) -> ApiError:
    """A 422 shaped like FastAPI's own validation errors, naming the spec field."""
    return ApiError(422, "validation_error", [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def validate_spec(spec: JobSpec, datasets: FindsDatasets, registry: ResolvesVersions) -> ResolvedSpec:
    """Check `spec` against the zoo, the data sets and the registry; raise a 422 ApiError if invalid."""
    from microgpt.zoo import PRESETS

    needs_base = spec.kind in ("finetune", "evaluate", "quantize", "export")
    if spec.kind == "train" and spec.base_model is not None:
        raise invalid(
            ["base_model"], "a train job starts from scratch; use kind 'finetune' to start from a model"
        )
    if needs_base and not spec.base_model:
        raise invalid(["base_model"], f"a {spec.kind} job needs base_model (name, name@alias or name/3)")
    _only_for(spec, "lora", spec.lora, ("finetune",))
    _only_for(spec, "quantize", spec.quantize, ("quantize",))
    _only_for(spec, "evaluate", spec.evaluate, ("evaluate",))
    _only_for(spec, "export", spec.export, ("export",))
    if spec.kind in ("evaluate", "quantize", "export"):
        for field, value in (("preset", spec.preset), ("model", spec.model), ("train", spec.train)):
            if value:
                raise invalid([field], f"a {spec.kind} job does not train; drop {field}")
        if spec.checkpoint_interval is not None:
            raise invalid(
                ["checkpoint_interval"], f"a {spec.kind} job does not train; drop checkpoint_interval"
            )
    if spec.kind == "evaluate" and spec.output_model is not None:
        raise invalid(["output_model"], "an evaluate job pushes nothing; its result is in the job's metrics")

    base = None
    if needs_base:
        assert spec.base_model is not None
        base = _resolve_base(registry, spec.base_model)

    preset_name = spec.preset
    if spec.kind == "train" and preset_name is None:
        raise invalid(["preset"], f"a train job needs a preset; one of {', '.join(PRESETS)}")
    if spec.kind == "finetune" and preset_name is None:
        preset_name = getattr(base, "preset", None)
        if preset_name not in PRESETS:
            raise invalid(
                ["preset"],
                f"{spec.base_model} records no zoo preset to take the training recipe from; name one",
            )
    total_steps = None
    if spec.kind in ("train", "finetune"):
        assert preset_name is not None
        total_steps = _check_overrides(spec, preset_name)
        if spec.lora is not None:
            _check_lora(spec)

    dataset, dataset_sha256 = None, None
    if spec.kind in ("finetune", "evaluate") and spec.dataset is None:
        raise invalid(
            ["dataset"], f"a {spec.kind} job needs a dataset (a built-in name or an uploaded data set)"
        )
    if spec.kind in ("train", "finetune", "evaluate"):
        ref = spec.dataset
        if ref is None:  # train: the preset's own data set
            ref = PRESETS[preset_name].train.dataset if preset_name else None
            if ref is None:
                raise invalid(["dataset"], f"preset {preset_name!r} names no data set; give one")
        dataset, dataset_sha256 = _resolve_dataset(datasets, ref)

    output_model = spec.output_model
    if spec.kind != "evaluate":
        if output_model is None:
            base_name = getattr(base, "name", None)
            output_model = {
                "train": preset_name,
                "finetune": f"{base_name}-ft",
                "quantize": f"{base_name}-{(spec.quantize.mode if spec.quantize else 'int8')}",
                "export": f"{base_name}-{(spec.export.format if spec.export else 'onnx')}",
            }[spec.kind]
        if not output_model or not NAME.fullmatch(output_model):
            raise invalid(
                ["output_model"], f"{output_model!r} is not a model name: use [A-Za-z0-9._-], up to 128"
            )
    base_ref = None if base is None else f"{base.name}/{base.version}"
    return ResolvedSpec(preset_name, total_steps, dataset, dataset_sha256, base_ref, output_model)


def _only_for(spec: JobSpec, field: str, value: object, kinds: tuple[str, ...]) -> None:
    if value is not None and spec.kind not in kinds:
        raise invalid([field], f"{field} applies to {' and '.join(kinds)} jobs, not {spec.kind}")


def _resolve_base(registry: ResolvesVersions, ref: str) -> Any:
    from microgpt.registry import RegistryError

    try:
        return registry.resolve(ref)
    except RegistryError as e:
        status = getattr(e, "status", None)
        if status is None or status >= 500:
            raise ApiError(503, "registry_unavailable", f"cannot resolve {ref!r}: {e}") from None
        raise invalid(["base_model"], f"no ready registry version {ref!r}: {e}") from None
    except ConnectionError as e:
        raise ApiError(503, "registry_unavailable", str(e)) from None
    except ValueError as e:
        raise invalid(["base_model"], str(e)) from None


def _check_overrides(spec: JobSpec, preset_name: str) -> int:
    """Apply the overrides as the loop will; return max_steps."""
    from microgpt.train.loop import FINETUNE_MODEL_CHANGES
    from microgpt.zoo import PRESETS

    if preset_name not in PRESETS:
        raise invalid(["preset"], f"unknown preset {preset_name!r}; one of {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    if spec.kind == "finetune":
        refused = sorted(set(spec.model) - FINETUNE_MODEL_CHANGES)
        if refused:
            raise invalid(["model", refused[0]], "finetuning keeps the base model's architecture")
    for section, config, overrides in (
        ("model", preset.model, spec.model),
        ("train", preset.train, spec.train),
    ):
        try:
            config.updated(**overrides)
        except ValidationError as e:
            first = e.errors()[0]
            loc = [str(p) for p in first["loc"]] or [next(iter(overrides), "")]
            raise invalid([section, *loc], first["msg"]) from None
        except (TypeError, ValueError) as e:
            raise invalid([section], str(e)) from None
    return int(preset.train.updated(**spec.train).max_steps)


def _check_lora(spec: JobSpec) -> None:
    try:
        lora_config(spec)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise invalid(["lora"], " ".join(str(e).split())) from None


def lora_config(spec: JobSpec) -> Any:
    """The LoRAConfig a finetune spec asks for, or None."""
    from microgpt.train.lora import LoRAConfig

    if spec.lora is None:
        return None
    extra: dict[str, Any] = {} if spec.lora.dropout is None else {"dropout": spec.lora.dropout}
    alpha = spec.lora.alpha if spec.lora.alpha is not None else 2.0 * spec.lora.rank
    return LoRAConfig(rank=spec.lora.rank, alpha=alpha, **extra)


def _resolve_dataset(datasets: FindsDatasets, ref: str) -> tuple[str, str | None]:
    from microgpt.data.builtin import DATASETS

    if ref in DATASETS:
        return ref, None
    found = datasets.find_dataset(ref)
    if found is None:
        raise invalid(
            ["dataset"],
            f"no data set {ref!r}: neither a built-in ({', '.join(DATASETS)}) nor uploaded (POST /datasets)",
        )
    return found.id, found.sha256
