"""vary as a Ray Serve application: the HTTP edge as one deployment, each local model as its own.

    HTTP ─▶ Serve's proxy ─▶ edge deployment: the FastAPI app (app.build_app) with its lifespan: validation,
             auth, limits, storage, usage; hosted providers are called from here
         ─▶ RayTarget ─▶ model deployment "model-NAME": replicas holding the weights (on their GPU when
             given one) and running LocalModel (queue, batching) as a single box does

A model's `[models.ray]` table in the catalogue is handed to `serve.deployment(...).options(**table)` as it
is; the catalogue's `[ray.edge]` table likewise for the edge. Settings reach the replicas as a plain dict.
Every replica publishes its metrics through Ray's metrics export (metrics_export.py). Serve's graceful
shutdown waits for the longest request a replica may be serving (Serve's own default is 20 s).

`build` is an application builder for Ray's own `serve run` / `serve deploy` (import path
`vary.cluster.deployments:build`, args: vary's settings names); `vary serve --ray` uses `application` directly.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import ray
from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from vary.app import build_app
from vary.cluster.metrics_export import RegistryExport
from vary.engines.diffusion import Placement
from vary.engines.weights import bound_hub_timeouts
from vary.imaging import ImageDecoder
from vary.ops.logs import configure_logging
from vary.ops.metrics import Metrics
from vary.ops.traces import configure_tracing
from vary.safety.policy import SafetyPolicy
from vary.service.catalogue import Catalogue, CatalogueEntry, CatalogueError, catalogue_for
from vary.service.components import Services
from vary.service.registry import ModelRegistry
from vary.settings import Settings
from vary.targets.base import Made, Resilience
from vary.targets.local_model import LocalModel, QueuePolicy
from vary.targets.ray_replica import RayTarget, ShippedRequest

log = logging.getLogger("vary.ray")
tracer = trace.get_tracer(__name__)

APP_NAME = "vary"
EDGE_DEPLOYMENT = "edge"
# Serve's default of 5 requests in flight per replica; the edge only waits on models, so it takes many.
EDGE_MAX_ONGOING_REQUESTS = 1000
# A replica lost mid-request is tried again on another, up to this many attempts in all.
REPLICA_ATTEMPTS = 3
# The command's environment variables that replicas get too: the standard AWS, Hugging Face and
# OpenTelemetry settings.
FORWARDED_ENV_PREFIXES = ("AWS_", "HF_", "OTEL_")
# Those of them that are credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, HF_TOKEN, the OTLP exporter's
# HEADERS): never in a runtime_env, whose env_vars Ray shows on its dashboard and writes to its logs
# (ray-project/ray#28276).
SECRET_ENV_WORDS = ("SECRET", "TOKEN", "PASSWORD", "HEADERS")


def model_deployment_name(model: str) -> str:
    return f"model-{model}"


def replica_resilience(settings: Settings) -> Resilience:
    # Retries are for a replica lost mid-request: Serve routes the next attempt to a live one, once its
    # router has seen the loss. The timeout bounds an attempt whose replica hangs, queue wait included.
    return Resilience(
        max_attempts=REPLICA_ATTEMPTS, timeout_seconds=settings.ray_attempt_timeout_seconds, backoff_seconds=0.5
    )


def longest_request_seconds(settings: Settings, *, attempts: int = 1) -> float:
    """The longest `attempts` attempts at a model's deployment may take, the backoffs between them included:
    what Serve's graceful shutdown must wait for before it kills a replica (a model replica serves one
    attempt; the edge waits for all of a request's)."""
    resilience = replica_resilience(settings)
    backoffs = sum(resilience.backoff_seconds * 2.0**attempt for attempt in range(attempts - 1))
    return float(attempts * settings.ray_attempt_timeout_seconds + backoffs)


class ModelReplica:
    """One replica of a model's deployment: the weights, loaded on this replica's GPU when it has one."""

    def __init__(
        self, settings: dict[str, Any], model: CatalogueEntry, secret_env: dict[str, str] | None = None
    ) -> None:
        os.environ.update(secret_env or {})  # first: the Hub's token is read when the weights load
        config = Settings(**settings)
        configure_logging(config.log_format, level=config.log_level)
        configure_tracing()  # the OTEL_* variables, forwarded from the command (with_driver_env)
        bound_hub_timeouts()  # as `vary serve` does: a Hub that never answers fails the load, not hangs it
        device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to this replica's GPUs
        placement = Placement(device=device, dtype=config.dtype, compile=config.compile)
        engine = model.build(placement=placement, overrides=config.render_overrides())
        self.model = LocalModel(engine, decoder=ImageDecoder(config.image_rules()), queue=QueuePolicy.of(config))
        # Its queue, batches, images and GPU: the same metrics as one box's, published through Ray's export.
        self.metrics = Metrics(served=[model.name])
        self.metrics.watch([self.model])
        if model.eager:
            engine.warmup()  # the replica is not ready, so gets no request, until the weights are loaded
        self.model.start(on_batch=functools.partial(self.metrics.observe_batch, model.name))
        self.export = RegistryExport(lambda: self.metrics.registry).start()
        log.info("replica of %s ready on %s", model.name, device)

    async def make(self, shipped: ShippedRequest) -> Made:
        # A child of the edge's attempt span, across the Ray hop.
        with tracer.start_as_current_span(
            "vary.replica", context=propagate.extract(shipped.trace_context), kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("gen_ai.request.model", self.model.name)
            return await self.model.make(shipped.request())

    def __del__(self) -> None:
        export = getattr(self, "export", None)
        if export is not None:
            export.close()
        model = getattr(self, "model", None)
        if model is not None:
            model.close()


@serve.ingress()
class Edge:
    """The HTTP edge: vary's FastAPI app, built on the replica with its models' handles; Serve runs its lifespan."""

    def __init__(
        self,
        settings: dict[str, Any],
        catalogue: Catalogue,
        models: dict[str, DeploymentHandle[Any]],
        secret_env: dict[str, str] | None = None,
    ) -> None:
        os.environ.update(secret_env or {})  # first: boto3 reads the S3 credentials when the store opens
        self.settings = Settings(**settings)
        self.catalogue = catalogue  # as the driver read it: the file need not be on this node
        self.models = models

    def __serve_build_asgi_app__(self) -> FastAPI:
        settings = self.settings
        configure_logging(settings.log_format, level=settings.log_level)
        configure_tracing()  # build_app adds the server span when it is on
        decoder = ImageDecoder(settings.image_rules())

        def ray_target(model: CatalogueEntry) -> RayTarget:
            handle = self.models[model.name]
            return RayTarget(
                model.name,
                handle,
                resilience=replica_resilience(settings),
                retry_after_seconds=settings.retry_after_seconds,
            )

        registry = ModelRegistry.from_catalogue(
            self.catalogue,
            placement=Placement(device="cpu"),  # the engines here only describe the models: never loaded
            overrides=settings.render_overrides(),
            remote=ray_target,
            safety=SafetyPolicy.of_settings(settings),  # the edge checks the images, as on one box
        )
        app = build_app(settings, registry=registry, decoder=decoder)
        # This edge replica's metrics (requests, stages, attempts, ...), once its lifespan has made them: Serve's
        # proxy hands /metrics to any one edge replica, Ray's export has every replica's.
        self.export = RegistryExport(lambda: _registry_of(app)).start()
        return app


def _registry_of(app: FastAPI) -> CollectorRegistry | None:
    services: Services | None = getattr(app.state, "services", None)
    return services.metrics.registry if services is not None else None


def model_options(model: CatalogueEntry, settings: Settings, *, has_gpus: bool) -> dict[str, Any]:
    """The deployment options of a model: its [models.ray] table as it is, over vary's defaults."""
    defaults: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": 1} if has_gpus else {"num_cpus": 1},
        # The replica's own scheduler bounds its queue and batches what is in it: it must see the whole
        # queue and a running batch, where Serve's default of 5 requests would cap every batch at 5.
        "max_ongoing_requests": settings.queue_size + settings.max_batch_images,
        # A replica stopped (downscaling, an update) finishes the attempts it holds; Serve's 20 s would cut them.
        "graceful_shutdown_timeout_s": longest_request_seconds(settings),
    }
    if "num_replicas" not in model.ray and "autoscaling_config" not in model.ray:
        defaults["num_replicas"] = 1
    return {**defaults, **model.ray}


def edge_options(catalogue: Catalogue, settings: Settings) -> dict[str, Any]:
    return {
        "num_replicas": 1,
        "max_ongoing_requests": EDGE_MAX_ONGOING_REQUESTS,
        # An edge replica stopped waits for its requests' every attempt.
        "graceful_shutdown_timeout_s": longest_request_seconds(settings, attempts=REPLICA_ATTEMPTS),
        **catalogue.ray_edge,
    }


def is_secret_env(name: str) -> bool:
    return any(word in name for word in SECRET_ENV_WORDS)


def with_driver_env(options: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The options with the command's AWS_* and HF_* variables in the replicas' environment, credentials
    left out (driver_secrets: they travel as a bind argument, which Ray does not show).

    A replica is a Ray worker, started with its node's environment, not the command's: without these the
    edge could not reach the S3 store, nor a model replica its Hugging Face cache or mirror, on a cluster
    configured the standard way. A table's own `runtime_env.env_vars` win.
    """
    forwarded = {
        name: value
        for name, value in environ.items()
        if name.startswith(FORWARDED_ENV_PREFIXES) and not is_secret_env(name)
    }
    if not forwarded:
        return options
    actor = dict(options.get("ray_actor_options") or {})
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {**forwarded, **(runtime_env.get("env_vars") or {})}
    actor["runtime_env"] = runtime_env
    return {**options, "ray_actor_options": actor}


def driver_secrets(options: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The command's AWS_*/HF_* credentials, for the replica to put in its own environment when it starts;
    a table's own `runtime_env.env_vars` win here too."""
    own = ((options.get("ray_actor_options") or {}).get("runtime_env") or {}).get("env_vars") or {}
    return {
        name: value
        for name, value in environ.items()
        if name.startswith(FORWARDED_ENV_PREFIXES) and is_secret_env(name) and name not in own
    }


def shipped_settings(settings: Settings) -> dict[str, Any]:
    """The settings as the replicas get them: plain JSON, the signing secret itself included (pydantic's JSON
    masks it, which would leave each replica with a different secret, or none it accepts)."""
    shipped = settings.model_dump(mode="json")
    for name in ("signing_secret", "signing_secret_previous", "database_password"):
        secret = getattr(settings, name)
        if secret is not None:
            shipped[name] = secret.get_secret_value()
    return shipped


def cluster_has_gpus() -> bool:
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return resources.get("GPU", 0) > 0


def application(settings: Settings) -> Application:
    """The Serve application for these settings: the edge bound to one deployment per local model."""

    if settings.catalogue is not None:  # read here, on the driver: a relative path means this directory
        settings = settings.model_copy(update={"catalogue": settings.catalogue.resolve()})
    catalogue = catalogue_for(settings.catalogue, settings.model, settings.accept_license)
    shipped = shipped_settings(settings)
    has_gpus = cluster_has_gpus()
    models: dict[str, Application] = {}
    for model in catalogue.models:
        if not model.local:
            continue  # hosted providers are called from the edge; a route is its members' targets
        deployment = serve.deployment(name=model_deployment_name(model.name))(ModelReplica)
        table = model_options(model, settings, has_gpus=has_gpus)
        options = with_driver_env(table, os.environ)
        models[model.name] = _with_options(deployment, options, f"model {model.name!r}: [models.ray]").bind(
            shipped, model, driver_secrets(table, os.environ)
        )
    edge_deployment = serve.deployment(name=EDGE_DEPLOYMENT)(Edge)
    table = edge_options(catalogue, settings)
    edge = _with_options(edge_deployment, with_driver_env(table, os.environ), "[ray.edge]")
    return edge.bind(shipped, catalogue, models, driver_secrets(table, os.environ))


def _with_options(deployment: Deployment, options: dict[str, Any], where: str) -> Deployment:
    """Serve's own check of a catalogue table, as one line naming the table."""
    try:
        return deployment.options(**options)
    except (TypeError, ValueError) as exc:  # an unknown option; a bad value (pydantic's error is a ValueError)
        raise CatalogueError(f"{where}: {' '.join(str(exc).split())}") from None


def build(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder (`import_path: vary.cluster.deployments:build`): args are vary's settings names,
    e.g. {"config": "catalogue.toml", "data_dir": "/shared/vary"}; the VARY_* environment fills the rest."""
    return application(Settings(**args))
