"""The FastAPI app factories: routes, the lifespan that owns the worker pool and the builder, and metrics.

`build_app(service)` is pure: it changes nothing outside the app it returns (process-wide tuning, such as the
scheduling policy or freezing the collector, belongs to the process entry point, `qbert serve`). `create_app`
finds the artifacts and builds to serve, makes the `Service` and hands it to `build_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from quantization.catalog import Catalog, load_catalog
from quantization.catalog_build import FINISHED_STATES, BuildEvent, BuildJob, catalog_jobs, serving_order
from quantization.tasks import TASKS, Task
from service.answering import answer, api_key_dependencies, check_request, field_limits
from service.builder import CatalogBuilder
from service.discovery import discover_artifacts, served_tasks
from service.errors import (
    InferenceFailedError,
    InvalidInputError,
    ModelNotReadyError,
    ModelUnavailableError,
    ServiceError,
    UnknownPrecisionError,
    UnknownTaskError,
    install_error_handlers,
)
from service.json_io import (
    document_request_models,
    json_response,
    openapi_inputs,
    read_body,
)
from service.latency import RecentLatencies
from service.metrics import ServiceMetrics
from service.middleware import BodySizeLimit
from service.playground import playground_router
from service.pool import Key, WorkerPool
from service.protocol import ArtifactRef, ItemError, ItemResult
from service.schemas import (
    BuildProgressEntry,
    ErrorResponse,
    LatencyEntry,
    ModelEntry,
    ModelsResponse,
)
from service.settings import ServiceSettings
from service.v2 import v2_router

logger = logging.getLogger("qbert.service")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 429, 503, 504)
}
_ITEM_ERRORS: dict[ItemError, type[ServiceError]] = {
    ItemError.INVALID_INPUT: InvalidInputError,
    ItemError.INFERENCE_FAILED: InferenceFailedError,
}


class Service:
    """What the routes need: settings, the models known (on disk or being built), the pool and the metrics."""

    def __init__(
        self,
        settings: ServiceSettings,
        artifacts: list[ArtifactRef],
        metrics: ServiceMetrics,
        builds: list[BuildJob] | None = None,
        on_build_event: Callable[[BuildEvent], None] | None = None,
        pool_factory: Callable[[ServiceSettings, list[ArtifactRef], ServiceMetrics], WorkerPool] = WorkerPool,
        served: dict[str, Task] | None = None,
    ) -> None:
        self.settings = settings
        # Each served model's task (its routes' request and response shapes); built-in names need no entry.
        self.served: dict[str, Task] = dict(TASKS) | (served or {})
        self.metrics = metrics
        self.builds = builds or []
        self.build_jobs = {job.key: job for job in self.builds}
        # A stand-in's build serves under another model's key; it is a model of its own only where it was named.
        built_models = [job.key for job in self.builds if job.served]
        self.build_keys = set(built_models)
        # Artifacts the builder will check (and rebuild where stale) load only once it says they are built.
        ready_now = [a for a in artifacts if (a.task, a.precision) not in self.build_keys]
        self.keys: list[Key] = [(a.task, a.precision) for a in ready_now] + built_models
        self.pool = pool_factory(settings, ready_now, metrics)
        self.latencies = RecentLatencies()
        self.build_events: dict[Key, BuildEvent] = {}
        # Compiles wait while the first builds run: on the same cores they would slow them several times over.
        self.pool.hold_compiles(self.first_builds_pending())
        self._on_build_event = on_build_event
        self.builder = (
            CatalogBuilder(
                self.builds, settings.artifacts, settings.build_threads, self.on_build_event, self.on_builder_exit
            )
            if self.builds
            else None
        )

    def precisions_of(self, task: str) -> list[str]:
        return [precision for t, precision in self.keys if t == task]

    def tasks(self) -> list[str]:
        return sorted({task for task, _ in self.keys})

    # ----- the builder's reports (on the event loop's thread) ------------------------------------

    def build_finished(self, key: Key) -> bool:
        event = self.build_events.get(key)
        return event is not None and event.state in FINISHED_STATES

    def first_builds_pending(self) -> bool:
        """Whether the builder still works on a task's default precision (every request waits for those)."""
        default = self.settings.default_precision
        return any(job.precision == default and not self.build_finished(job.key) for job in self.builds)

    def on_build_event(self, event: BuildEvent) -> None:
        self.build_events[event.key] = event
        if event.state == "built":
            # Evaluated before it is handed over: the accuracy the worker reads from its manifest is already there.
            self.pool.add_artifacts(self._serves_as(self.build_jobs[event.key]))
        elif event.state == "failed":
            logger.error("building %s/%s failed: %s", event.task, event.precision, event.detail)
        # After the load it sends: the last default model loads before the compiles it releases take the worker.
        if event.state in FINISHED_STATES and self.pool.compiles_held and not self.first_builds_pending():
            self.pool.hold_compiles(False)
        if self._on_build_event is not None:
            self._on_build_event(event)

    def _serves_as(self, job: BuildJob) -> list[ArtifactRef]:
        """What a built artifact serves as: its own model, and the one it stands in for until that one is built."""
        path = self.settings.artifacts / job.task / job.precision
        refs = [ArtifactRef(job.task, job.precision, path)] if job.served else []
        stood_in = (job.task, job.stands_in_for)
        if job.stands_in_for and stood_in in self.build_keys and not self.build_finished(stood_in):
            refs.append(ArtifactRef(*stood_in, path))
        return refs

    def on_builder_exit(self, code: int | None) -> None:
        unfinished = [job for job in self.builds if not self.build_finished(job.key)]
        if code != 0 or unfinished:
            logger.error("the builder exited with code %s; %d artifacts unbuilt", code, len(unfinished))
        for index, job in enumerate(unfinished):
            self.on_build_event(
                BuildEvent(
                    job.task,
                    job.precision,
                    "failed",
                    index,
                    len(unfinished),
                    detail=f"the builder exited with code {code}",
                )
            )

    # ----- model states ----------------------------------------------------------------------------

    def state(self, key: Key) -> str:
        """Where a model is: its build step until it is built, then its step in the workers."""
        if self.pool.serves(key):
            return self.pool.model_state(key) or "ready"
        event = self.build_events.get(key)
        if event is not None and event.state != "built":
            return event.state
        if event is None and key in self.build_keys:
            return "pending"
        # Built (handed to the workers) or found on disk at the start: queued in the workers' loaders.
        return self.pool.model_state(key) or ("loading" if event is not None else "pending")

    def ready(self) -> tuple[bool, str]:
        """Ready once every worker runs and serves each task's default precision (where that one can ever serve)."""
        pool = self.pool
        if pool.started_workers() < self.settings.workers:
            return False, f"{pool.started_workers()} of {self.settings.workers} workers started"
        waiting = [
            f"{task}/{self.settings.default_precision} ({self.state(key)})"
            for task in self.tasks()
            if (key := (task, self.settings.default_precision)) in self.keys
            and not pool.served_by_all(key)
            and self.state(key) not in ("refused", "failed")
        ]
        if waiting:
            return False, "waiting for " + ", ".join(waiting)
        if not pool.models:
            if not pool.settled() or (self.builder is not None and self.builder.running):
                return False, "no model serves yet"
            return False, f"no model can serve: all {len(self.keys)} artifacts were refused or failed (see /models)"
        return True, ""

    def choose_precision(self, task: str, query: str | None, header: str | None) -> str:
        # The URL's ?precision= wins over X-Precision (a header a proxy or client default may set), as the published
        # schema says; the response names the precision that ran. Refusing the pair instead would refuse requests
        # the schema cannot tell apart from valid ones.
        precision = query or header or self.settings.default_precision
        available = self.precisions_of(task)
        if precision not in available:
            raise UnknownPrecisionError(
                f"no precision {precision!r} for task {task!r}; available: {', '.join(available)}", available=available
            )
        return precision

    def model_name(self, task: str, precision: str) -> str:
        info = self.pool.models.get((task, precision))
        return info.model if info else "unknown"

    async def run(self, task: str, precision: str, payloads: list[Any]) -> list[Any]:
        """Results for every payload, or the first failing input's error (naming its index)."""
        key = (task, precision)
        if not self.pool.serves(key):
            state = self.state(key)
            if state == "refused":
                raise ModelUnavailableError(f"{task}/{precision} was refused at load: {self.pool.refused.get(key)}")
            if state == "failed":
                raise ModelUnavailableError(f"{task}/{precision} could not be built: {self.build_events[key].detail}")
            retry_after = "2" if state in ("loading", "compiling") else "10"
            raise ModelNotReadyError(
                f"{task}/{precision} is not ready yet: {state}", headers={"Retry-After": retry_after}, state=state
            )
        results: list[ItemResult] = await self.pool.submit(task, precision, payloads)
        for index, result in enumerate(results):
            if result.error:
                where = f"texts[{index}]: " if len(results) > 1 else ""
                raise _ITEM_ERRORS.get(result.error, InferenceFailedError)(where + result.detail)
        return [r.value for r in results]


def _predict_router(service: Service) -> APIRouter:
    # The routes close over `service` rather than asking for it as a dependency: one less to resolve per request.
    dependencies = api_key_dependencies(service.settings, protects=True)
    router = APIRouter(dependencies=dependencies, responses=_ERRORS, tags=["predict"])

    def predict_route(path: str, body: type[BaseModel], answer: Any, summary: str, name: str) -> Callable:
        """A POST route that reads `body` itself (see `service.json_io`) and answers `answer` (a model or a union)."""
        return router.post(path, response_model=answer, summary=summary, openapi_extra=openapi_inputs(body), name=name)

    def model_route(task: Task) -> None:
        """POST task.route: its kind's request read and checked, run through the pool, its kind's response."""
        body_model = task.request_model()

        async def predict(request: Request) -> Response:
            body = await read_body(request, body_model)
            payloads = task.request_payloads(body)

            def check() -> None:
                check_request(payloads, task.request_texts(body), service.settings)

            answered_by, values = await answer(service, task.name, request, check, payloads)
            return json_response(task.response(answered_by, body, values))

        operation = f"predict_{task.name}"  # the OpenAPI operationId's stem: stable per model, not per kind
        predict_route(task.route, body_model, task.response_model(), task.summary, operation)(predict)

    # The built-in routes always exist (a model not served answers 404 naming those that are); each model of the
    # user's own gets its own documented route, with its kind's request and response.
    for name in [*TASKS, *sorted(set(service.served) - set(TASKS))]:
        model_route(service.served[name])

    @router.post("/predict/{name}", include_in_schema=False)
    async def unknown_model(name: str) -> None:
        raise UnknownTaskError(
            f"no model {name!r}; available: {', '.join(service.tasks())} (QA is POST /qa)", available=service.tasks()
        )

    @router.get("/models", response_model=ModelsResponse, tags=["ops"], summary="Every model, its state and accuracy")
    async def models() -> ModelsResponse:
        return ModelsResponse(
            default_precision=service.settings.default_precision,
            models=[_model_entry(service, key) for key in service.keys],
        )

    return router


def _model_entry(service: Service, key: Key) -> ModelEntry:
    state, info = service.state(key), service.pool.models.get(key)
    serving = service.pool.serves(key)
    event = service.build_events.get(key)
    progress = None
    if event is not None and event.state in ("building", "evaluating"):
        progress = BuildProgressEntry(done=event.done, total=event.total, unit=event.unit)
    reason = service.pool.refused.get(key) if state == "refused" else None
    if state == "failed" and event is not None:
        reason = event.detail
    if serving and key in service.pool.replacement_refused:
        reason = f"its own artifact was refused ({service.pool.replacement_refused[key]}); the stand-in answers"
    common: dict[str, Any] = {
        "task": key[0],
        "precision": key[1],
        "state": state,
        "serving": serving,
        "progress": progress,
    }
    if info is not None and serving:
        common["artifact"] = info.artifact or key[1]
    if info is None or not serving:
        status = "refused" if state in ("refused", "failed") else "loading"
        return ModelEntry(**common, model="", status=status, reason=reason)
    return ModelEntry(
        **common,
        model=info.model,
        status="loaded",
        bits_per_weight=info.bits_per_weight,
        packed_bytes=info.packed_bytes,
        runtime_bytes=info.runtime_bytes,
        fp32_bytes=info.fp32_bytes,
        load_seconds=info.load_seconds,
        backend=info.backend,
        accuracy=list(info.accuracy),
        latency=_latency_entry(service, key),
        reason=reason,
    )


def _latency_entry(service: Service, key: Key) -> LatencyEntry | None:
    summary = service.latencies.summary(key)
    if summary is None:
        return None
    return LatencyEntry(p50_ms=round(summary.p50_ms, 3), p95_ms=round(summary.p95_ms, 3), requests=summary.count)


def _ops_router(service: Service) -> APIRouter:
    dependencies = api_key_dependencies(service.settings, protects=service.settings.api_key_protects_ops)
    router = APIRouter(dependencies=dependencies, tags=["ops"])

    @router.get("/healthz", summary="Liveness: the process and its event loop answer")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: 200 once every worker runs and serves each task's default precision")
    async def readyz() -> JSONResponse:
        ready, detail = service.ready()
        states = [service.state(key) for key in service.keys]
        body: dict[str, Any] = {
            "ready": ready,
            "workers": service.pool.worker_status(),
            "models": {
                "ready": states.count("ready"),
                "serving": sum(map(service.pool.serves, service.keys)),
                "total": len(states),
            },
        }
        if ready:
            return JSONResponse(body)
        return JSONResponse({"error": "not_ready", "detail": detail, **body}, status_code=503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        service.metrics.record_workers(service.pool.worker_pids())
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router


def catalog_if_present() -> Catalog | None:
    try:
        return load_catalog()
    except FileNotFoundError:  # an image or folder without the catalog serves whatever is there
        return None


def artifacts_to_serve(settings: ServiceSettings, catalog: Catalog | None) -> list[ArtifactRef]:
    """The built artifacts of `settings`' tasks and precisions on disk (the study's only where named; a served
    precision whose artifact is missing by its stand-in's)."""
    stand_ins = catalog.stand_ins if catalog else {}
    return discover_artifacts(
        settings.artifacts, settings.tasks, settings.precisions, study_precisions(catalog), stand_ins
    )


def study_precisions(catalog: Catalog | None) -> frozenset[str]:
    """The catalog's reproduction-study precisions (served only when QBERT_PRECISIONS names them)."""
    if catalog is None:
        return frozenset()
    return frozenset(p for entry in catalog.tasks.values() for p in entry.study) - {
        p for entry in catalog.tasks.values() for p in entry.precisions
    }


def create_app(
    settings: ServiceSettings | None = None, on_build_event: Callable[[BuildEvent], None] | None = None
) -> FastAPI:
    """The service app. Its lifespan starts the worker pool (spawned processes) and, with `settings.build`, the
    builder process that builds missing or stale catalog artifacts (each `BuildEvent` also goes to
    `on_build_event`: a progress display); both stop with it."""
    settings = settings or ServiceSettings()
    catalog = catalog_if_present()
    artifacts = artifacts_to_serve(settings, catalog)
    builds = []
    if settings.build:
        catalog = catalog or load_catalog()  # raises: building needs the catalog
        jobs = catalog_jobs(catalog, settings.tasks, settings.precisions)
        slow = {name for name, precision in catalog.precisions.items() if precision.qat is not None}
        builds = serving_order(jobs, settings.default_precision, slow)
    if not artifacts and not builds:
        raise ValueError(f"no artifacts under {settings.artifacts} for tasks {settings.tasks}; run `qbert build`")
    served = served_tasks(settings.tasks, catalog, artifacts)
    return build_app(Service(settings, artifacts, ServiceMetrics(), builds, on_build_event, served=served))


def build_app(service: Service) -> FastAPI:
    """The app serving `service`: its lifespan starts the service's pool (and builder) and stops them; nothing
    else outside the app changes."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.pool.start()
        if service.builder is not None:
            service.builder.start()
        try:
            yield
        finally:
            if service.builder is not None:
                await service.builder.close()
            await service.pool.close()

    app = FastAPI(
        title="qbert-serve",
        summary="Q-BERT quantized BERT models: sentiment, named entities and extractive QA at a chosen bit width",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=service.settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(_predict_router(service))
    app.include_router(_ops_router(service))
    app.include_router(v2_router(service))
    app.include_router(playground_router())
    bodies = list(dict.fromkeys(task.request_model() for task in (TASKS | service.served).values()))
    document_request_models(app, bodies, field_limits(service.settings))
    return app
