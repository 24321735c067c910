"""The transport-free inference core: everything a transport can ask of the server, as plain calls.

HTTP and gRPC are thin codecs around one `InferenceService`; nothing here knows about either. The
service is a facade: each call goes to the collaborator whose one job it is.

- `Admission`: the model threads, the in-flight count, the drain.
- `Execution`: a request on one version, through its batcher or on a thread, recorded once.
- `Composition`: routers and pipelines of served models.
- `Streams`: answers that are streams of items.
- `Trainer`: training jobs; `ModelMethods`: a model's methods other than `predict`, called by name.
- `Versions`: initialize, load, unload, switch the default (each passed through `Changes`).
- `Catalog`: what the server says about what it serves.
- `TrafficControl`: which version a request to a bare model name goes to (a split, sticky or not),
  a share of them also sent to a shadow version, and rollouts that step, promote or roll back.

What happens is published as events (`modelpod.observe.events`) to the recorders: the statistics
extension, Prometheus metrics and the status page's activity, plus any the caller adds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from modelpod.errors import InvalidInput, NotFound
from modelpod.observe.activity import RecentActivity
from modelpod.observe.events import Recorder, Recorders, SpanStarter
from modelpod.observe.prometheus import ServerMetrics
from modelpod.observe.statistics import Statistics
from modelpod.protocol.cost import CostLimits, DecodeBudget
from modelpod.protocol.openai_requests import Sampling
from modelpod.runtime.batchers import Batchers
from modelpod.serving.admission import Admission
from modelpod.serving.catalog import Catalog
from modelpod.serving.changes import DEFAULT, LOAD, UNLOAD, Changes
from modelpod.serving.composition import Composition
from modelpod.serving.execution import Execution
from modelpod.serving.inline import InlineGate
from modelpod.serving.model_methods import METHODS, ModelMethods
from modelpod.serving.openai import Finished, OpenAIServing, Prepared
from modelpod.serving.options import DEFAULT_OPTIONS, Options
from modelpod.serving.pool import ModelPool
from modelpod.serving.repository import Repository
from modelpod.serving.rollout_watch import RolloutWatch
from modelpod.serving.served_pipeline import ServedPipeline
from modelpod.serving.streams import Streams
from modelpod.serving.tensor_requests import TensorRequests
from modelpod.serving.tensors import Arrays
from modelpod.serving.traffic_control import TrafficControl
from modelpod.serving.traffic_policy import TrafficPolicy
from modelpod.serving.trainer import Trainer
from modelpod.serving.versions import Versions


class InferenceService:
    """Everything a transport can ask of the server, as plain Python calls."""

    def __init__(
        self,
        repository: Repository,
        pool: ModelPool,
        max_workers: int = 12,
        name: str = "modelpod",
        slow_ms: float = 1000.0,
        recorders: Sequence[Recorder] = (),
        changes: Changes | None = None,
        limits: CostLimits | None = None,
        tracer: SpanStarter | None = None,
        inline_ms: float = 1.0,
    ) -> None:
        self.repository = repository
        self.tracer = tracer  # the edges start each request's span with it; None: tracing is off
        self.pool = pool
        self.name = name
        self.slow_ms = slow_ms  # requests to a model that take longer are logged with their breakdown
        self.changes = changes or Changes()
        self.limits = limits or CostLimits()  # what one tensor request may cost (modelpod.protocol.cost)
        self.tensor_requests = TensorRequests(repository, self.limits)
        self._ready = True
        self.admission = Admission(max_workers)
        self.batchers = Batchers()
        self.statistics = Statistics()
        self.recent = RecentActivity()  # the status page's last few minutes
        # token-level batching's sequences, running and waiting, read when scraped (lambdas: the
        # streams are made below, on an execution that records to these metrics)
        self.metrics = ServerMetrics(
            pool.stats, self.batchers.queue_depths, lambda: self.in_flight,
            lambda: self.streaming.running(), lambda: self.streaming.waiting(),  # noqa: PLW0108
        )  # fmt: skip
        watch = RolloutWatch()  # the numbers rollouts decide on
        self.recorder = Recorders([self.statistics, self.metrics, self.recent, watch, *recorders])
        inline = InlineGate(inline_ms)  # lone requests to cheap models on the event loop
        self.execution = Execution(repository, pool, self.admission, self.batchers, self.recorder, inline)
        self.composition = Composition(repository, self.execution, self.tensor_requests)
        self.streaming = Streams(self.execution, self.composition, self.tensor_requests)
        self.trainer = Trainer(repository, pool, self.recorder, self.changes)
        self.versions = Versions(self.execution)
        promote = self.set_default
        self.traffic = TrafficControl(
            self.execution, pool.per_model, watch, self.recorder, promote, self.changes
        )
        self.methods = ModelMethods(self.execution, self.versions, self.trainer, self.traffic, self.changes)
        self.openai = OpenAIServing(self.execution, self.streaming)
        self.catalog = Catalog(name, self.execution, self.batchers, self.trainer, self.statistics)

    # -- the model's own methods ----------------------------------------------------------------

    async def call(
        self,
        name: str,
        version: str | None,
        method: str,
        arguments: Mapping[str, Any],
        query_params: Mapping[str, str] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> Any:
        """`predict`, `initialize`, `train` (starts a job), `training` (that job) or `log` on one
        version, with keyword arguments; or the model's `traffic` policy (`set_traffic`: its `policy`)."""
        if method not in METHODS:
            raise NotFound(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(arguments, Mapping) or not all(isinstance(key, str) for key in arguments):
            raise InvalidInput("the arguments must be an object of keyword arguments, named by strings")
        if method != "predict":
            return await self.methods.call(name, version, method, arguments)
        requested, version = version, self.traffic.version_for(name, version, options.traffic_key)
        hosted, version = self.execution.available(name, version)
        target = self.composition.route(hosted, version, query_params, arguments)
        if target is not None:
            return await self.call(target, None, method, arguments, query_params, options)
        if isinstance(hosted.probe, ServedPipeline):
            return await self.composition.predict(hosted, version, arguments, query_params, options)
        request = dict(arguments)
        if query_params is not None and hosted.query_params:
            request.setdefault("query_params", dict(query_params))
        started = time.monotonic()
        calls = [request]
        work = self.execution.predict_many(hosted, version, calls, options)
        answers = await self.execution.observed(hosted, version, options, work, calls)
        self.traffic.shadow(hosted, requested, calls, answers, started)
        return answers[0]

    def training_progress(
        self, name: str, version: str, after: int = 0
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """What the version's latest job reported past its entry `after`, and the job's document."""
        return self.trainer.progress(name, version, after)

    # -- streams: a predict that yields --------------------------------------------------------------

    def streams(self, name: str, version: str | None = None) -> bool:
        """Whether a model's answer is a stream of items (what Triton calls a decoupled model)."""
        return self.streaming.streams(name, version)

    def stream(
        self,
        name: str,
        version: str | None,
        arguments: Mapping[str, Any],
        query_params: Mapping[str, str] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> AsyncGenerator[Any, None]:
        """`predict`'s items as the model yields them; a model that does not yield gives one item.

        Close it (`aclose`, or cancel the task iterating it) to stop early: the model's generator is
        closed where it runs (its `finally` runs), its slot is freed, and the stream is counted as
        cancelled. An error, before the first item or midway, raises from the iteration. A deadline
        (`options.timeout`) bounds the whole stream. The model's traffic split picks the version."""
        version = self.traffic.version_for(name, version, options.traffic_key)
        return self.streaming.stream(name, version, arguments, query_params, options)

    def infer_stream(
        self, name: str, version: str | None, inputs: Arrays, options: Options = DEFAULT_OPTIONS
    ) -> AsyncGenerator[tuple[str, Arrays], None]:
        """Tensors in; the version that ran, and output tensors for each item the model yields."""
        version = self.traffic.version_for(name, version, options.traffic_key)
        return self.streaming.infer_stream(name, version, inputs, options)

    # -- OpenAI's routes (see modelpod.serving.openai) --------------------------------------------------

    def openai_models(self) -> list[str]:
        """Ids of the models that answer a /v1 route: bare names (the default) and `name:version`s."""
        return self.openai.model_ids()

    async def embed(
        self, name: str, version: str | None, texts: Sequence[str], dimensions: int | None, options: Options
    ) -> tuple[list[Any], int | None]:
        """One vector per text, through the version's batcher; and the texts' token count if known."""
        version = self.traffic.version_for(name, version, options.traffic_key)
        return await self.openai.embed(name, version, texts, dimensions, options)

    def prepare_generation(
        self,
        name: str,
        version: str | None,
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        sampling: Sampling,
        options: Options = DEFAULT_OPTIONS,
    ) -> Prepared:
        """A generation request checked against the model (unsupported parameters refused), on the
        version its traffic split picks (every choice of it generated there)."""
        version = self.traffic.version_for(name, version, options.traffic_key)
        return self.openai.prepare(name, version, prompt, messages, sampling)

    def generate(
        self,
        name: str,
        version: str | None,
        prepared: Prepared,
        stop: Sequence[str],
        options: Options = DEFAULT_OPTIONS,
        seed_offset: int = 0,
    ) -> AsyncGenerator[str | Finished, None]:
        """Text pieces as the model makes them, cut at `stop` or the limit, then one `Finished`."""
        return self.openai.generate(name, version, prepared, stop, options, seed_offset)

    # -- Open Inference Protocol ------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        inputs: Arrays,
        query_params: Mapping[str, str] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> tuple[str, Arrays]:
        """Run tensors through one version; returns the version that ran and its outputs."""
        requested, version = version, self.traffic.version_for(name, version, options.traffic_key)
        hosted, version = self.execution.available(name, version)
        target = self.composition.route(hosted, version, query_params, inputs)
        if target is not None:
            return await self.infer(target, None, inputs, query_params, options)
        if isinstance(hosted.probe, ServedPipeline):
            return version, await self.composition.infer(hosted, version, inputs, query_params, options)
        calls = await self.tensor_requests.calls(hosted, inputs)
        started = time.monotonic()
        work = self.execution.predict_many(hosted, version, calls, options)
        results = await self.execution.observed(hosted, version, options, work, calls)
        self.traffic.shadow(hosted, requested, calls, results, started)
        return version, await self.tensor_requests.outputs(hosted.probe, len(calls), inputs, results)

    def decode_budget(self, name: str, version: str | None) -> DecodeBudget:
        """What a V2 request's tensors may cost as they are decoded (see `TensorRequests`)."""
        return self.tensor_requests.decode_budget(name, version)

    # -- readiness (what the server says about what it serves: `self.catalog`) -----------------------

    def ready(self) -> bool:
        """Ready once the server has loaded its models, until it starts shutting down."""
        return self._ready and not self.admission.draining

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    # -- changing what is served ---------------------------------------------------------------------

    async def load_model(self, name: str) -> None:
        """Load the default version now, and accept requests for the model again."""
        await self.changes.make(LOAD, name, "", lambda: self.versions.load(name))

    async def unload_model(self, name: str) -> None:
        """Unload every loaded version; requests are refused until the model is loaded again."""
        await self.changes.make(UNLOAD, name, "", lambda: self.versions.unload(name))

    async def set_default(self, name: str, version: str) -> dict[str, Any]:
        """Load and warm `version`, then make it the default; in-flight requests finish on the old one."""
        _, resolved = self.repository.resolve(name, version)
        return await self.changes.make(
            DEFAULT, name, resolved, lambda: self.versions.set_default(name, resolved)
        )

    def traffic_policy(self, name: str) -> dict[str, Any]:
        """The model's traffic policy (see `modelpod.serving.traffic`), its shadow's and rollout's state."""
        return self.traffic.document(name)

    async def set_traffic(self, name: str, document: Any) -> dict[str, Any]:
        """Check, save and apply a new traffic policy (shared with other replicas through `Changes`);
        requests in flight finish where they went."""
        return await self.traffic.set(name, document)

    def configure_traffic(self, policies: dict[str, TrafficPolicy]) -> None:
        self.traffic.configure(policies)

    # -- shutdown ------------------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Refuse new work from now on; what is running goes on."""
        self.admission.draining = True

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight model calls to finish; False if some were still running at `timeout`."""
        return await self.admission.drain(timeout)

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    def close(self) -> None:
        self.traffic.close()
        self.streaming.close()
        self.batchers.close()
        self.admission.close()
        self.pool.close()
