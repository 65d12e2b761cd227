"""The models this process serves: loaded from the registry on demand, in an LRU, swapped when aliases move.

A model id is `REF:PRECISION`, REF being a registry reference (`names`, `names@production`,
`names/3`); requests may name the bare REF, which picks a loaded copy at any precision or
loads one at the default precision. Entries of `MICROGPT_INFERENCE_MODELS` may also be
`ID=DIR[:PRECISION]`, a local checkpoint directory served as ID (for offline use and the
load test); requests can never name a path.

Design choices a reader must know:

- Loading (pull with checksums, `load_model`, engine start, a short greedy warm-up)
  runs in a worker thread, once per id however many requests wait for it, and is logged
  (ref, precision, version, seconds).
- A checkpoint that cannot be loaded is a `bad_model` error (502; 400 without a tokenizer),
  remembered per id: later requests get the same error at once instead of loading it again,
  until the alias moves to another version (seen by the poll) or `POST /admin/reload`.
- An engine whose scheduler died (`BatchEngine.failure`) makes `/readyz` answer 503; the
  next request for that model starts a new engine on the same weights.
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
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microgpt.errors import Invalid, NotFound
from microgpt.precision import PRECISIONS, Precision
from microgpt.registry.names import NAME_RE, REF_RE
from microgpt.sampling import SamplingParams
from microgpt.settings import Settings
from services.common.errors import ApiError
from services.inference.metrics import InferenceMetrics

if TYPE_CHECKING:
    from microgpt.loading import ServingModel
    from microgpt.registry import RegistryClient, VersionInfo
    from microgpt.serving.engine import BatchEngine, EngineStats
    from microgpt.tokenizers import Tokenizer

log = logging.getLogger(__name__)

WARMUP_TOKENS = 8
RETIRE_POLL_S = 0.05


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a registry reference or a local directory, at one precision."""

    ref: str
    precision: Precision
    local_dir: Path | None = None

    @property
    def id(self) -> str:
        return f"{self.ref}:{self.precision}"

    @property
    def movable(self) -> bool:
        """Whether the reference can point at another version later (a bare name or an alias)."""
        return self.local_dir is None and "/" not in self.ref


def parse_model(
    text: str, default_precision: Precision, *, allow_local: bool = False
) -> tuple[ModelSpec, bool]:
    """`REF[:PRECISION]` (or, when allowed, `ID=DIR[:PRECISION]`) and whether a precision was given."""
    text = text.strip()
    body, sep, suffix = text.rpartition(":")
    named = next((p for p in PRECISIONS if sep and p == suffix), None)
    explicit = named is not None
    precision = named or default_precision
    if not explicit:
        body = text
    if allow_local and "=" in body:
        name, _, directory = body.partition("=")
        if not NAME_RE.fullmatch(name):
            raise Invalid("invalid_model", f"model id {name!r} must be letters, digits, '.', '_' or '-'")
        return ModelSpec(name, precision, Path(directory).expanduser()), explicit
    if not REF_RE.fullmatch(body):
        raise Invalid(
            "invalid_model",
            f"model {text!r} is not NAME, NAME@ALIAS or NAME/VERSION, optionally followed by "
            f":PRECISION ({', '.join(PRECISIONS)})",
        )
    return ModelSpec(body, precision), explicit


class BadModel(ApiError):
    """A checkpoint that cannot be served; `version` is the registry version that failed (None: local)."""

    def __init__(self, status: int, detail: str, version: int | None) -> None:
        super().__init__(status, "bad_model", detail)
        self.version = version


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
        return self.serving.text_tokenizer()  # a model without one is refused at load

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
        self._failed: dict[str, tuple[ModelSpec, BadModel]] = {}  # by id: loads not to retry
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
        if model.engine.failure is not None:
            model = await self._restart(model)
        self._models.move_to_end(model.id)
        return model

    def failed_engines(self) -> list[str]:
        """Ids of loaded models whose engine died (restarted at their next request)."""
        return [m.id for m in self._models.values() if m.engine.failure is not None]

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
        if spec.id in self._failed:
            raise self._failed[spec.id][1]
        return await self._once(spec.id, lambda: self._load_and_insert(spec))

    async def _once(self, key: str, work: Callable[[], Coroutine[Any, Any, LoadedModel]]) -> LoadedModel:
        """Run `work` once per `key` at a time, however many callers wait for it (none can cancel it)."""
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(work())
            self._loading[key] = task
            task.add_done_callback(lambda t: self._loading.pop(key, None))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no log noise
        return await asyncio.shield(task)

    async def _load_and_insert(self, spec: ModelSpec) -> LoadedModel:
        try:
            model = await asyncio.to_thread(self._load_sync, spec, None)
        except BadModel as e:
            self._failed[spec.id] = (spec, e)
            raise
        self._insert(model)
        return model

    async def _restart(self, failed: LoadedModel) -> LoadedModel:
        """A new engine on the weights of a model whose engine died, in its place in the table."""

        async def restart() -> LoadedModel:
            log.error("the engine of %s stopped (%s); starting a new one", failed.id, failed.engine.failure)
            engine = await asyncio.to_thread(self._start_engine, failed.spec, failed.serving)
            fresh = dataclasses.replace(failed, engine=engine, leases=0)
            if self._models.get(failed.id) is failed:
                self._models[failed.id] = fresh
            return fresh

        return await self._once(failed.id, restart)

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
        from microgpt.loading import load_model

        number = None if version is None else version.version
        log.info("loading %s (version %s) at %s from %s", spec.ref, number, spec.precision, directory)
        try:
            serving = load_model(directory, precision=spec.precision)
        except (ValueError, RuntimeError, MemoryError) as e:  # CheckpointError is a ValueError
            log.error("cannot load %s (version %s): %s", spec.id, number, e)
            raise BadModel(502, f"model {spec.ref} (version {number}) cannot be loaded: {e}", number) from e
        if serving.tokenizer is None:
            raise BadModel(400, f"{spec.ref} has no tokenizer.json; a served model needs one", number)
        engine = self._start_engine(spec, serving)
        seconds = time.perf_counter() - started
        self.metrics.model_load.labels(spec.id).observe(seconds)
        log.info(
            "loaded %s (version %s) at %s in %.1f s (%.0f MB of weights, %s decoding)",
            spec.ref, number, spec.precision, seconds, serving.weight_bytes / 1e6, engine.backend,
        )  # fmt: skip
        return LoadedModel(spec, serving, engine, version, seconds)

    def _start_engine(self, spec: ModelSpec, serving: ServingModel) -> BatchEngine:
        """A started, warmed-up engine for `serving`'s model."""
        from microgpt.serving.engine import BatchEngine

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
            warm_up(engine, serving.text_tokenizer())
        except BaseException:
            engine.stop()
            raise
        return engine

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
                raise NotFound("model_not_found", f"the registry has no model {ref!r}: {message}") from e
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

    async def reload(self, name: str | None = None, *, forget_failures: bool = True) -> list[Swap]:
        """Re-resolve movable references (all, or the one `name` names) and swap in new versions.

        Remembered load failures (of `name`, or all) are forgotten, so the next request tries
        again; with `forget_failures=False` (the poll) only those whose alias has moved are."""
        forgotten = await self._forget_failures(name, moved_only=not forget_failures)
        if name is not None:
            model = self.find(name)
            if model is None:
                if forgotten:
                    return []
                raise NotFound("model_not_found", f"model {name!r} is not loaded")
            targets = [model]
        else:
            targets = self.loaded()
        async with self._swap_lock:  # one reload at a time: a poll and an admin call never race
            return [await self._reload_one(model) for model in targets]

    async def _forget_failures(self, name: str | None, *, moved_only: bool) -> list[str]:
        """Drop remembered load failures (those of `name`, or all; only moved aliases if asked)."""
        forgotten = []
        for key, (spec, error) in list(self._failed.items()):
            if name is not None and name not in (key, spec.ref):
                continue
            if moved_only:
                if not spec.movable:
                    continue
                latest = await asyncio.to_thread(self._registry_call, self._client().resolve, spec.ref)
                if latest.version == error.version:
                    continue
            del self._failed[key]
            forgotten.append(key)
        return forgotten

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
                await self.reload(forget_failures=False)
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
