"""The models this process serves: loaded from the registry on demand, in an LRU, swapped when aliases move.

A model id is `REF:PRECISION`, REF being a registry reference (`names`, `names@production`,
`names/3`); requests may name the bare REF, which picks a loaded copy at any precision or
loads one at the default precision. Entries of `MICROGPT_INFERENCE_MODELS` may also be
`ID=DIR[:PRECISION]`, a local checkpoint directory served as ID (for offline use and the
load test); requests can never name a path.

Design choices a reader must know:

- Loading (pull with checksums, `load_serving_model`, engine start, a short greedy warm-up)
  runs in a worker thread, once per id however many requests wait for it.
- Every request holds a lease on the model it uses. A model is retired (on eviction or on a
  swap) by taking it out of the table at once, so new requests go to its successor, then
  stopping its engine when its last lease ends: in-flight requests finish on the old weights.
- The LRU is bounded by count and by weight bytes; the model just loaded is never evicted.
- A reference that can move (a bare name or `name@alias`) is re-resolved every
  `inference_poll_seconds` and on `POST /admin/reload`; a new version is loaded beside the old
  one and swapped in only once it is warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microgpt.sampling import SamplingParams
from microgpt.settings import Settings
from services.common.errors import ApiError
from services.inference.metrics import InferenceMetrics

if TYPE_CHECKING:
    from microgpt.quantize import ServingModel
    from microgpt.registry import RegistryClient, VersionInfo
    from microgpt.serving.engine import BatchEngine, EngineStats
    from microgpt.tokenizers import Tokenizer

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8", "int4")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
REF_RE = re.compile(rf"{_NAME}(@{_NAME}|/[1-9][0-9]{{0,9}})?")
WARMUP_TOKENS = 8
RETIRE_POLL_S = 0.05


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a registry reference or a local directory, at one precision."""

    ref: str
    precision: str
    local_dir: Path | None = None

    @property
    def id(self) -> str:
        return f"{self.ref}:{self.precision}"

    @property
    def movable(self) -> bool:
        """Whether the reference can point at another version later (a bare name or an alias)."""
        return self.local_dir is None and "/" not in self.ref


def parse_model(text: str, default_precision: str, *, allow_local: bool = False) -> tuple[ModelSpec, bool]:
    """`REF[:PRECISION]` (or, when allowed, `ID=DIR[:PRECISION]`) and whether a precision was given."""
    text = text.strip()
    body, sep, precision = text.rpartition(":")
    explicit = bool(sep) and precision in PRECISIONS
    if not explicit:
        body, precision = text, default_precision
    if allow_local and "=" in body:
        name, _, directory = body.partition("=")
        if not re.fullmatch(_NAME, name):
            raise ValueError(f"model id {name!r} must be letters, digits, '.', '_' or '-'")
        return ModelSpec(name, precision, Path(directory).expanduser()), explicit
    if not REF_RE.fullmatch(body):
        raise ApiError(
            400,
            "invalid_model",
            f"model {text!r} is not NAME, NAME@ALIAS or NAME/VERSION, optionally followed by "
            f":PRECISION ({', '.join(PRECISIONS)})",
        )
    return ModelSpec(body, precision), explicit


@dataclass
class LoadedModel:
    spec: ModelSpec
    serving: ServingModel
    engine: BatchEngine
    version: VersionInfo | None
    load_seconds: float
    created: int = field(default_factory=lambda: int(time.time()))
    leases: int = 0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def tokenizer(self) -> Tokenizer:
        return self.serving.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.serving.model.config.block_size

    @property
    def weight_bytes(self) -> int:
        return self.serving.weight_bytes

    @property
    def version_number(self) -> int | None:
        return None if self.version is None else self.version.version


@dataclass(frozen=True)
class Swap:
    id: str
    old_version: int | None
    new_version: int | None
    swapped: bool


class ModelPool:
    """Loaded models by id, least recently used first; see the module docstring."""

    def __init__(self, settings: Settings, metrics: InferenceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._registry: RegistryClient | None = None
        self._swap_lock = asyncio.Lock()

    # --- lookup -------------------------------------------------------------------------------

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def engine_stats(self) -> Iterator[tuple[str, EngineStats]]:
        for model in list(self._models.values()):
            yield model.id, model.engine.stats

    def find(self, name: str) -> LoadedModel | None:
        """A loaded model for `name` (an id, or a bare reference at any precision), or None."""
        if name in self._models:
            return self._models[name]
        for model in reversed(self._models.values()):  # the most recently used first
            if model.spec.ref == name:
                return model
        return None

    async def get(self, name: str) -> LoadedModel:
        """The model `name` names, loading it from the registry if needed (marked most recently used)."""
        model = self.find(name)
        if model is None:
            spec, _ = parse_model(name, self.settings.inference_precision)
            model = self._models.get(spec.id) or await self._load_once(spec)
        self._models.move_to_end(model.id)
        return model

    async def acquire(self, name: str) -> LoadedModel:
        """The model for one request, leased until `release`: a retired engine waits for its leases."""
        model = await self.get(name)
        model.leases += 1
        return model

    @staticmethod
    def release(model: LoadedModel) -> None:
        model.leases -= 1

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[LoadedModel]:
        model = await self.acquire(name)
        try:
            yield model
        finally:
            self.release(model)

    # --- loading ------------------------------------------------------------------------------

    async def preload(self, entries: str) -> None:
        """Load each comma-separated entry of `inference_models`; a failure is logged, the rest load."""
        for entry in filter(None, (e.strip() for e in entries.split(","))):
            try:
                spec, _ = parse_model(entry, self.settings.inference_precision, allow_local=True)
                await self._load_once(spec)
            except Exception as e:  # one bad entry must not keep the others from serving
                log.error("could not load %r: %s", entry, e)

    async def _load_once(self, spec: ModelSpec) -> LoadedModel:
        """Load `spec` into the table; concurrent callers share one load, which no caller can cancel."""
        if spec.id in self._models:
            return self._models[spec.id]
        task = self._loading.get(spec.id)
        if task is None:
            task = asyncio.create_task(self._load_and_insert(spec))
            self._loading[spec.id] = task
            task.add_done_callback(lambda t: self._loading.pop(spec.id, None))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no log noise
        return await asyncio.shield(task)

    async def _load_and_insert(self, spec: ModelSpec) -> LoadedModel:
        model = await asyncio.to_thread(self._load_sync, spec, None)
        self._insert(model)
        return model

    def _load_sync(self, spec: ModelSpec, pinned: VersionInfo | None) -> LoadedModel:
        """Pull (checksums verified), load at the precision, start the engine and warm it up."""
        started = time.perf_counter()
        version = pinned
        if spec.local_dir is not None:
            directory = spec.local_dir
        else:
            registry = self._client()
            version = version or self._registry_call(registry.resolve, spec.ref)
            directory = self._registry_call(registry.pull, f"{version.name}/{version.version}")
        from microgpt.quantize import load_serving_model
        from microgpt.serving.engine import BatchEngine

        serving = load_serving_model(directory, spec.precision)
        if serving.tokenizer is None:
            raise ApiError(400, "bad_model", f"{spec.ref} has no tokenizer.json; a served model needs one")
        engine = BatchEngine(
            serving.model,
            max_batch=self.settings.inference_max_batch,
            max_queue=self.settings.inference_max_queue,
            backend=self.settings.inference_backend,
            threads=self.settings.inference_threads,
            name=spec.id,
        )
        engine.start()
        try:
            warm_up(engine, serving.tokenizer)
        except BaseException:
            engine.stop()
            raise
        seconds = time.perf_counter() - started
        self.metrics.model_load.labels(spec.id).observe(seconds)
        log.info("loaded %s (version %s) in %.1fs", spec.id, version and version.version, seconds)
        return LoadedModel(spec, serving, engine, version, seconds)

    def _client(self) -> RegistryClient:
        if self._registry is None:
            from microgpt.registry import RegistryClient

            self._registry = RegistryClient.from_settings(self.settings)
        return self._registry

    @staticmethod
    def _registry_call(fn: Any, ref: str) -> Any:
        """A registry call whose failures become API errors: 404 for an unknown model, else 502."""
        try:
            return fn(ref)
        except (OSError, ValueError) as e:
            status = getattr(e, "status", None) or getattr(e, "status_code", None)
            message = " ".join(str(e).split())
            if status == 404:
                raise ApiError(404, "model_not_found", f"the registry has no model {ref!r}: {message}") from e
            if isinstance(e, ValueError) and status is None:  # e.g. a checksum mismatch
                raise ApiError(502, "bad_model", f"model {ref!r} could not be loaded: {message}") from e
            raise ApiError(502, "registry_unavailable", f"the registry failed for {ref!r}: {message}") from e

    def _insert(self, model: LoadedModel) -> None:
        self._models[model.id] = model
        self._models.move_to_end(model.id)
        while len(self._models) > 1 and (
            len(self._models) > self.settings.inference_max_models
            or sum(m.weight_bytes for m in self._models.values()) > self.settings.inference_max_model_bytes
        ):
            _, oldest = self._models.popitem(last=False)
            log.info("evicting %s (least recently used)", oldest.id)
            self._retire(oldest)

    # --- swapping and retiring ----------------------------------------------------------------

    async def reload(self, name: str | None = None) -> list[Swap]:
        """Re-resolve movable references (all, or the one `name` names) and swap in new versions."""
        if name is not None:
            model = self.find(name)
            if model is None:
                raise ApiError(404, "model_not_found", f"model {name!r} is not loaded")
            targets = [model]
        else:
            targets = self.loaded()
        async with self._swap_lock:  # one reload at a time: a poll and an admin call never race
            return [await self._reload_one(model) for model in targets]

    async def _reload_one(self, old: LoadedModel) -> Swap:
        if not old.spec.movable:
            return Swap(old.id, old.version_number, old.version_number, False)
        registry = self._client()
        latest: VersionInfo = await asyncio.to_thread(self._registry_call, registry.resolve, old.spec.ref)
        if latest.version == old.version_number:
            return Swap(old.id, old.version_number, latest.version, False)
        new = await asyncio.to_thread(self._load_sync, old.spec, latest)
        if self._models.get(old.id) is old:
            self._models[old.id] = new  # same place in the LRU
        else:  # evicted while loading: serve the new one anyway
            self._insert(new)
        self._retire(old)
        log.info("swapped %s: version %s -> %s", old.id, old.version_number, latest.version)
        return Swap(old.id, old.version_number, latest.version, True)

    async def poll_forever(self, interval: float) -> None:
        """Reload every `interval` seconds; registry outages are logged and retried at the next tick."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception as e:  # the next tick tries again
                log.warning("alias poll failed: %s", e)

    def _retire(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._drain_and_stop(model))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_stop(self, model: LoadedModel) -> None:
        try:
            while model.leases > 0:
                await asyncio.sleep(RETIRE_POLL_S)
        finally:  # also when shutdown cancels the wait
            await asyncio.to_thread(model.engine.stop)

    async def close(self) -> None:
        """Stop every engine, retiring ones included, and any load in progress."""
        for task in [*self._loading.values(), *self._retiring]:
            task.cancel()
        await asyncio.gather(*self._loading.values(), *self._retiring, return_exceptions=True)
        for model in self._models.values():
            await asyncio.to_thread(model.engine.stop)
        self._models.clear()


def warm_up(engine: BatchEngine, tokenizer: Tokenizer) -> None:
    """A few greedy tokens through the engine, so the first request does not pay for first-use costs."""
    start = [tokenizer.bos_id if tokenizer.bos_id is not None else 0]
    params = SamplingParams(temperature=0.0, max_new_tokens=WARMUP_TOKENS)
    for _ in engine.submit(start, params):
        pass
