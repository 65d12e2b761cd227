"""Complete validation of a job spec before it is enqueued, with errors that name the field.

A job that would fail on its first line in a worker (an unknown preset, a typo in an
override, a data set or base model that does not exist) is refused here with a 422 whose
`loc` is the spec field, e.g. `["body", "train", "lr"]`. The zoo and config classes are
the only judges of presets and overrides (the same `with_overrides` the loop applies), and
the registry is asked to resolve base models, so validation and execution cannot disagree.
The result is what the job row records: the resolved base version ("name/3") is pinned at
submission, so a later push to that name does not change what the job runs on, and the output
model is named then (a train job's default is `<preset>-<data set>` unless the data set is the
preset's own, so one preset trained on two data sets never shares a model), so the submitter is
told where the result will go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from microgpt.errors import InvalidFields, Unavailable
from microgpt.registry.names import NAME_RE
from services.common.schemas import MAX_INT
from services.trainer.schemas import EvaluateSpec, ExportSpec, JobSpec

CHAT_DATASET = "chat"  # the built-in conversations: an sft job's default, the task evaluations' data


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


def invalid(loc: list[str | int], msg: str) -> InvalidFields:
    """An error shaped like FastAPI's own validation errors (a 422), naming the spec field."""
    return InvalidFields([{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def validate_spec(spec: JobSpec, datasets: FindsDatasets, registry: ResolvesVersions) -> ResolvedSpec:
    """Check `spec` against the zoo, the data sets and the registry; raise InvalidFields if invalid."""
    from microgpt.zoo import PRESETS

    needs_base = spec.kind in ("finetune", "sft", "evaluate", "quantize", "export")
    if spec.kind == "train" and spec.base_model is not None:
        raise invalid(
            ["base_model"], "a train job starts from scratch; use kind 'finetune' to start from a model"
        )
    if needs_base and not spec.base_model:
        raise invalid(["base_model"], f"a {spec.kind} job needs base_model (name, name@alias or name/3)")
    _only_for(spec, "lora", spec.lora, ("finetune", "sft"))
    _only_for(spec, "quantize", spec.quantize, ("quantize",))
    _only_for(spec, "evaluate", spec.evaluate, ("evaluate",))
    _only_for(spec, "export", spec.export, ("export",))
    if spec.export is not None:
        _check_export(spec.export)
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
    if spec.kind in ("finetune", "sft") and preset_name is None:
        preset_name = getattr(base, "preset", None)
        if preset_name not in PRESETS:
            raise invalid(
                ["preset"],
                f"{spec.base_model} records no zoo preset to take the training recipe from; name one",
            )
    total_steps = None
    if spec.kind in ("train", "finetune", "sft"):
        assert preset_name is not None
        total_steps = _check_overrides(spec, preset_name)
        if total_steps > MAX_INT:
            raise invalid(["train", "max_steps"], f"must be at most {MAX_INT}")
        if spec.lora is not None:
            _check_lora(spec)

    dataset, dataset_sha256, dataset_name = None, None, None
    tasks = spec.kind == "evaluate" and spec.evaluate is not None and spec.evaluate.tasks is not None
    if spec.kind in ("finetune", "evaluate") and spec.dataset is None and not tasks:
        raise invalid(
            ["dataset"], f"a {spec.kind} job needs a dataset (a built-in name or an uploaded data set)"
        )
    if spec.kind in ("train", "finetune", "sft", "evaluate") and not (tasks and spec.dataset is None):
        ref = spec.dataset
        if ref is None and spec.kind == "sft":
            ref = CHAT_DATASET
        elif ref is None:  # train: the preset's own data set
            ref = PRESETS[preset_name].train.dataset if preset_name else None
            if ref is None:
                raise invalid(["dataset"], f"preset {preset_name!r} names no data set; give one")
        dataset, dataset_sha256, dataset_name, upload_format = _resolve_dataset(datasets, ref)
        if spec.kind == "sft" or tasks:
            _check_conversations(ref, upload_format)
    if spec.evaluate is not None:
        _check_evaluate(spec.evaluate, dataset)

    output_model = spec.output_model
    if spec.kind != "evaluate":
        if output_model is None:
            output_model = _default_output_model(spec, preset_name, dataset_name, getattr(base, "name", None))
        if not output_model or not NAME_RE.fullmatch(output_model):
            raise invalid(
                ["output_model"], f"{output_model!r} is not a model name: use [A-Za-z0-9._-], up to 128"
            )
    base_ref = None if base is None else f"{base.name}/{base.version}"
    return ResolvedSpec(preset_name, total_steps, dataset, dataset_sha256, base_ref, output_model)


def _default_output_model(
    spec: JobSpec, preset_name: str | None, dataset_name: str | None, base_name: str | None
) -> str:
    """Train: the preset's name when it trains on its own data set, else `<preset>-<data set>`;
    the others: the base model's name and what was done to it."""
    from microgpt.zoo import PRESETS

    if spec.kind == "train":
        assert preset_name is not None
        if dataset_name == PRESETS[preset_name].train.dataset:
            return preset_name
        return f"{preset_name}-{dataset_name}"
    if spec.kind == "finetune":
        return f"{base_name}-ft"
    if spec.kind == "sft":
        return f"{base_name}-sft"
    if spec.kind == "quantize":
        return f"{base_name}-{spec.quantize.mode if spec.quantize else 'int8'}"
    options = spec.export or ExportSpec()
    quant = f"-{options.quant}" if options.quant not in (None, "f32") else ""
    return f"{base_name}-{options.format}{quant}"


def _check_export(options: ExportSpec) -> None:
    """The export options that only one format takes, named by field (the CLI's rules)."""
    if options.quant not in (None, "f32") and options.format != "gguf":
        raise invalid(["export", "quant"], f"quant is for gguf exports; {options.format} exports are float32")
    if options.opset is not None and options.format != "onnx":
        raise invalid(["export", "opset"], f"opset is for onnx exports, not {options.format}")


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
            raise Unavailable("registry_unavailable", f"cannot resolve {ref!r}: {e}") from None
        raise invalid(["base_model"], f"no ready registry version {ref!r}: {e}") from None
    except ConnectionError as e:
        raise Unavailable("registry_unavailable", str(e)) from None
    except ValueError as e:
        raise invalid(["base_model"], str(e)) from None


def _check_overrides(spec: JobSpec, preset_name: str) -> int:
    """Apply the overrides as the loop will; return max_steps."""
    from microgpt.train.loop import FINETUNE_MODEL_CHANGES
    from microgpt.zoo import PRESETS

    if preset_name not in PRESETS:
        raise invalid(["preset"], f"unknown preset {preset_name!r}; one of {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    if spec.kind in ("finetune", "sft"):
        refused = sorted(set(spec.model) - FINETUNE_MODEL_CHANGES)
        if refused:
            raise invalid(["model", refused[0]], "finetuning keeps the base model's architecture")
    train = train_overrides(spec)
    for section, config, overrides in (
        ("model", preset.model, spec.model),
        ("train", preset.train, train),
    ):
        try:
            config.updated(**overrides)
        except ValidationError as e:
            first = e.errors()[0]
            loc = [str(p) for p in first["loc"]] or [next(iter(overrides), "")]
            raise invalid([section, *loc], first["msg"]) from None
        except (TypeError, ValueError) as e:
            raise invalid([section], str(e)) from None
    return int(preset.train.updated(**train).max_steps)


def train_overrides(spec: JobSpec) -> dict[str, Any]:
    """The TrainConfig overrides a job trains with: the spec's, and for sft the loss on replies.

    An sft job is a finetune with `microgpt.config.SFT_SETTINGS` on its recipe; a spec that
    sets loss_on or data_mode otherwise is refused, naming the field.
    """
    from microgpt.config import SFT_SETTINGS

    if spec.kind != "sft":
        return dict(spec.train)
    for key in ("loss_on", "data_mode"):
        if key in spec.train and spec.train[key] != SFT_SETTINGS[key]:
            raise invalid(["train", key], f"an sft job trains with {key}={SFT_SETTINGS[key]}")
    return {**SFT_SETTINGS, **spec.train}


def _check_conversations(ref: str, upload_format: str | None) -> None:
    """SFT and task evaluations read conversations: the built-in chat, or an upload of format messages
    (`upload_format` is None for a built-in)."""
    from microgpt.data.builtin import DATASETS

    if ref in DATASETS:
        if ref != CHAT_DATASET:
            raise invalid(
                ["dataset"], f"{ref!r} is not conversations; use {CHAT_DATASET!r} or a messages upload"
            )
        return
    if upload_format != "messages":
        raise invalid(["dataset"], f"{ref!r} was not uploaded as conversations (format=messages)")


def _check_evaluate(options: EvaluateSpec, dataset: str | None) -> None:
    """The split fits the evaluation (loss: train/val; tasks: train/validation/test), tasks exist."""
    from microgpt.data.tasks import SPLITS, TASKS

    loss_splits = ("train", "val")
    if options.tasks is None:
        if options.split not in (None, *loss_splits):
            raise invalid(["evaluate", "split"], f"a loss evaluation reads {' or '.join(loss_splits)}")
        if options.limit is not None:
            raise invalid(["evaluate", "limit"], "limit is for tasks; a loss evaluation takes max_batches")
        return
    if options.split not in (None, *SPLITS):
        raise invalid(["evaluate", "split"], f"tasks are scored on {', '.join(SPLITS)}")
    if options.max_batches is not None:
        raise invalid(["evaluate", "max_batches"], "max_batches is for a loss evaluation; tasks take limit")
    if not options.tasks:
        raise invalid(["evaluate", "tasks"], 'name at least one task, or ["all"]')
    if dataset in (None, CHAT_DATASET) and options.tasks != ["all"]:
        unknown = [t for t in options.tasks if t not in TASKS]
        if unknown:
            raise invalid(["evaluate", "tasks"], f"unknown task {unknown[0]!r}; tasks: {', '.join(TASKS)}")


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


def _resolve_dataset(datasets: FindsDatasets, ref: str) -> tuple[str, str | None, str, str | None]:
    """The data set's id (or built-in name), its sha256 when known now, its name, and the format it
    was uploaded in (None for a built-in)."""
    from microgpt.data.builtin import DATASETS

    if ref in DATASETS:
        return ref, None, ref, None
    found = datasets.find_dataset(ref)
    if found is None:
        raise invalid(
            ["dataset"],
            f"no data set {ref!r}: neither a built-in ({', '.join(DATASETS)}) nor uploaded (POST /datasets)",
        )
    return found.id, found.sha256, found.name, found.format
