"""Ray Serve: the service's own routes in an ingress deployment, and each model's worker as the replicas of a
deployment of its own, which Ray places across the cluster's nodes and autoscales on ongoing requests.

One deployment per served model multiplexes its precisions (every replica loads them all, as a `qbert serve` worker
does), so a request's precision never needs a replica of its own. The ingress is the very app `qbert serve` runs
(`build_app`), with `RayPool` in place of the local process pool: same routes, same responses, same errors, same
/metrics. Ray Serve's own metrics (`ray_serve_*`, labelled by replica) come from every node's metrics agent.

Imported only where Ray is installed (`pip install 'qbert-serve[ray]'`): by `qbert ray-serve`, `serve run
deploy/ray/serve-config.yaml`, and Ray's workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from service.app import Service, artifacts_to_serve, build_app, catalog_if_present
from service.discovery import served_tasks
from service.errors import DeadlineExceededError, InferenceFailedError, NotReadyError, WorkerLostError
from service.metrics import ServiceMetrics
from service.pool import Key
from service.protocol import (
    ArtifactRef,
    ItemError,
    ItemResult,
    ModelInfo,
    ModelRefused,
    ModelServing,
    RunBatch,
)
from service.settings import ServiceSettings

logger = logging.getLogger("qbert.ray")


@dataclass(frozen=True)
class ModelScaling:
    """How a model's deployment scales (Ray Serve's own knobs)."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0  # per replica: past it, the autoscaler adds one
    max_ongoing_requests: int = 32  # per replica: past it, requests wait at the caller, not in the replica
    cpus_per_replica: float = 1.0  # the replica's torch threads follow it

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.target_ongoing_requests <= 0 or self.max_ongoing_requests < 1 or self.cpus_per_replica <= 0:
            raise ValueError("target_ongoing_requests, max_ongoing_requests and cpus_per_replica must be positive")

    def deployment_options(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": self.min_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "ray_actor_options": {"num_cpus": self.cpus_per_replica},
            "health_check_period_s": 5,
            "graceful_shutdown_timeout_s": 35,  # in-flight batches finish (request deadline 30 s)
        }


def _assigned_cpus() -> int:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


class ModelReplica:
    """One replica of a model's deployment: our worker (`InferenceWorker`) with every precision of the model loaded
    and compiled before it reports healthy, answering the batches that Ray Serve's batcher forms from requests."""

    def __init__(self, name: str, artifacts: list[tuple[str, str, str]], settings: dict[str, Any]) -> None:
        import torch

        from service.worker import InferenceWorker

        service_settings = ServiceSettings(**settings)
        threads = _assigned_cpus()
        torch.set_num_threads(threads)
        refs = tuple(ArtifactRef(task, precision, Path(path)) for task, precision, path in artifacts)
        spec = service_settings.worker_spec(0, refs, threads)
        messages: list[Any] = []
        self.worker = InferenceWorker(spec, messages.append)
        self.worker.add(refs)
        started = time.perf_counter()
        while self.worker.work():  # load, then compile: the replica takes requests once all are ready
            pass
        self.served = {m.info.precision: m.info for m in messages if isinstance(m, ModelServing) and not m.warming}
        self.refused = [m for m in messages if isinstance(m, ModelRefused)]
        self.name = name
        batcher = cast(Any, self.infer)  # `serve.batch` adds its setters to the method
        batcher.set_max_batch_size(service_settings.max_batch_size)
        batcher.set_batch_wait_timeout_s(service_settings.max_wait_s)
        self._batch_ids = 0
        logger.info(
            "%s: %s ready in %.1f s on %d threads", name, sorted(self.served), time.perf_counter() - started, threads
        )

    def models(self) -> tuple[list[ModelInfo], list[ModelRefused]]:
        return list(self.served.values()), list(self.refused)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def infer(self, requests: list[tuple[str, tuple[Any, ...]]]) -> list[list[ItemResult]]:
        """Each request is (precision, its payloads): one handle call per request, not per input (a call costs the
        ingress a millisecond or two of CPU). The batcher gathers concurrent requests; their inputs of one precision
        run as one batch, off the event loop (which keeps answering Ray's health checks meanwhile)."""
        by_precision: dict[str, list[tuple[int, int]]] = defaultdict(list)  # precision -> (request, input) indices
        for r, (precision, payloads) in enumerate(requests):
            by_precision[precision] += [(r, i) for i in range(len(payloads))]
        results: list[list[ItemResult]] = [[ItemResult()] * len(payloads) for _, payloads in requests]
        for precision, where in by_precision.items():
            self._batch_ids += 1
            payloads = tuple(requests[r][1][i] for r, i in where)
            try:
                done = await asyncio.to_thread(
                    self.worker.run, RunBatch(self._batch_ids, self.name, precision, payloads)
                )
                answers = done.results
            except Exception as exc:  # a bug or a kernel error fails this batch, not the replica (as a local worker)
                logger.exception("%s/%s: a batch failed", self.name, precision)
                answers = (ItemResult(error=ItemError.INFERENCE_FAILED, detail=f"{type(exc).__name__}: {exc}"),) * len(
                    where
                )
            for (r, i), result in zip(where, answers, strict=True):
                results[r][i] = result
        return results


@dataclass
class RayPool:
    """What `Service` asks of a worker pool, answered by the models' Ray Serve deployments (`service.pool.WorkerPool`
    is the local one): `submit` sends a request's inputs to the model's deployment, whose batcher groups requests."""

    handles: dict[str, DeploymentHandle]
    settings: ServiceSettings
    metrics: ServiceMetrics
    models: dict[Key, ModelInfo] = field(default_factory=dict)
    refused: dict[Key, str] = field(default_factory=dict)
    replacement_refused: dict[Key, str] = field(default_factory=dict)
    compiles_held: bool = False
    _started: bool = False

    async def start(self) -> None:
        """Ask one replica of each model what it serves (each replica loads the same artifacts)."""
        answers = await asyncio.gather(*(handle.models.remote() for handle in self.handles.values()))
        for served, refused in answers:
            self.models.update({(info.task, info.precision): info for info in served})
            self.refused.update({(r.task, r.precision): r.reason for r in refused})
        self.metrics.record_models(self.models.values())
        self.metrics.workers_configured.set(len(self.handles))
        self.metrics.workers_ready.set(len(self.handles))
        self._started = True

    async def close(self) -> None:
        self._started = False

    def hold_compiles(self, hold: bool) -> None:
        """Replicas compile before they report healthy: nothing to hold."""

    def serves(self, key: Key) -> bool:
        return key in self.models

    served_by_all = serves

    def model_state(self, key: Key) -> str | None:
        if key in self.models:
            return "ready"
        return "refused" if key in self.refused else None

    def started_workers(self) -> int:
        return len(self.handles) if self._started else 0

    def settled(self) -> bool:
        return self._started

    def worker_status(self) -> list[dict[str, Any]]:
        return [{"worker": name, "pid": None, "ready": self._started} for name in self.handles]

    def worker_pids(self) -> dict[int, int | None]:
        return {}  # replicas are Ray's processes, on any node: their memory is in Ray's metrics

    def add_artifacts(self, refs: list[ArtifactRef]) -> None:
        logger.warning("ignoring %d artifacts built after start: redeploy to serve them", len(refs))

    async def submit(self, task: str, precision: str, payloads: list[Any]) -> list[ItemResult]:
        if not self.serves((task, precision)):
            raise NotReadyError(f"no replica serves {task}/{precision}", headers={"Retry-After": "5"})
        call = self.handles[task].infer.remote((precision, tuple(payloads)))
        try:
            return list(await asyncio.wait_for(call, self.settings.request_timeout_s))
        except TimeoutError:
            call.cancel()
            raise DeadlineExceededError(f"no result within {self.settings.request_timeout_s:g} s") from None
        except RayActorError as exc:  # the replica died with the request: Ray replaces it
            raise WorkerLostError(
                f"the {task} replica was lost ({type(exc).__name__}); retry", headers={"Retry-After": "1"}
            ) from None
        except RayTaskError as exc:  # the call failed inside Ray (the replica answers its own errors as results)
            raise InferenceFailedError(f"{type(exc).__name__}: {exc.cause!r}") from None


@serve.ingress()
class Ingress:
    """The service's HTTP app (`build_app`), its pool the models' deployments."""

    def __init__(self, settings: dict[str, Any], artifacts: list[tuple[str, str, str]], **models: DeploymentHandle):
        self.settings = ServiceSettings(**settings)
        self.artifacts = [ArtifactRef(task, precision, Path(path)) for task, precision, path in artifacts]
        self.models = models

    def __serve_build_asgi_app__(self) -> Any:
        settings, handles = self.settings, self.models
        served = served_tasks(list(handles), catalog_if_present(), self.artifacts)

        def pool(settings: ServiceSettings, artifacts: list[ArtifactRef], metrics: ServiceMetrics) -> Any:
            return RayPool(handles, settings, metrics)

        service = Service(settings, self.artifacts, ServiceMetrics(), pool_factory=pool, served=served)
        return build_app(service)


def build_application(args: dict[str, Any]) -> Any:
    """The Ray Serve application (`serve run deploy/ray/serve-config.yaml`, `qbert ray-serve`).

    `args`: `settings` (ServiceSettings fields: `tasks`, `precisions`, `artifacts`, batching...), and `scaling` (a
    `ModelScaling`'s fields, for every model; a config file's `deployments` section overrides them per model)."""
    settings = ServiceSettings(**(args.get("settings") or {}))
    scaling = ModelScaling(**(args.get("scaling") or {}))
    refs = artifacts_to_serve(settings, catalog_if_present())
    if not refs:
        raise ValueError(f"no artifacts of {settings.tasks} under {settings.artifacts}: build them first (qbert build)")
    plain = settings.model_dump(mode="json", exclude={"api_key"})
    if settings.api_key is not None:
        plain["api_key"] = settings.api_key.get_secret_value()
    by_model: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for ref in refs:
        by_model[ref.task].append((ref.task, ref.precision, str(ref.path)))
    models = {
        name: serve.deployment(**scaling.deployment_options(name))(ModelReplica).bind(name, artifacts, plain)
        for name, artifacts in by_model.items()
    }
    ingress = serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0})(Ingress)
    return ingress.bind(plain, [artifact for artifacts in by_model.values() for artifact in artifacts], **models)
