"""`sfumato serve --ray`: the same FastAPI app (OpenAI, A1111, native jobs with SSE, the web UI) as N Ray Serve
replicas behind Ray's HTTP proxy.

Each replica is the single-process server, built by `server.app.create_app` inside the replica: its own `Engine`,
its own worker and batcher (an image equals its request run alone), the same auth, limits and safety. The replicas
share one job queue: the SQLite store in `data_dir` on one machine, or PostgreSQL (`--store postgresql://…`) across
machines (`data_dir` on shared storage). A job accepted by one replica may run on another; a killed replica's jobs
are claimed again after the store's lease. Ray Serve restarts the killed replica.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfumato.errors import InvalidRequest
from sfumato.server.settings import ServerSettings

APP_NAME = "sfumato"


@dataclass(frozen=True)
class ServeScale:
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; Ray scales on ongoing requests per replica
    target_ongoing: float = 2.0  # autoscaling target: requests in flight per replica
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    address: str | None = None  # a Ray cluster; None: start one here

    def check(self) -> ServeScale:
        if self.replicas < 1 or self.cpus_per_replica <= 0 or self.gpus_per_replica < 0:
            raise InvalidRequest("--replicas must be >= 1, --cpus-per-replica > 0 and --gpus-per-replica >= 0")
        if self.autoscale and not 0 <= self.autoscale[0] <= self.autoscale[1] or \
                self.autoscale and self.autoscale[1] < 1:
            raise InvalidRequest("--autoscale is MIN,MAX with 0 <= MIN <= MAX and MAX >= 1")
        if self.target_ongoing <= 0:
            raise InvalidRequest("--autoscale-target must be > 0")
        return self


def parse_autoscale(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise InvalidRequest(f"--autoscale is MIN,MAX (e.g. 1,4), got {text!r}") from None
    return low, high


def replica_settings(settings: ServerSettings) -> ServerSettings:
    """What each replica runs with: an absolute data folder (replicas do not share the driver's working directory)
    and a store shared with the other replicas."""
    return dataclasses.replace(settings, data_dir=settings.data_dir.resolve(), shared_store=True)


def deployment(settings: ServerSettings, scale: ServeScale):
    """The Ray Serve application: one ingress deployment whose replicas each build the sfumato app."""
    from ray import serve

    settings = replica_settings(settings)

    def build_app():
        from sfumato.scale.cluster import fit_threads
        from sfumato.server.app import create_app

        fit_threads()
        return create_app(settings)

    class SfumatoReplica:
        """A replica: the FastAPI app built by `build_app` answers every route."""

    options: dict[str, Any] = {"name": "SfumatoReplica", "max_ongoing_requests": 64,
                               "ray_actor_options": {"num_cpus": scale.cpus_per_replica,
                                                     "num_gpus": scale.gpus_per_replica}}
    if scale.autoscale:
        options["autoscaling_config"] = {"min_replicas": scale.autoscale[0], "max_replicas": scale.autoscale[1],
                                         "target_ongoing_requests": scale.target_ongoing}
    else:
        options["num_replicas"] = scale.replicas
    return serve.deployment(**options)(serve.ingress(build_app)(SfumatoReplica)).bind()


def start(settings: ServerSettings, scale: ServeScale) -> None:
    """Deploy on Ray (started here or joined) with Ray's HTTP proxy on settings.host:port; returns when every
    replica is up."""
    from ray import serve

    from sfumato.scale.cluster import connect

    settings.check()
    scale.check()
    connect(scale.address)
    quiet = {"log_level": "WARNING", "enable_access_log": False}  # a log line per request costs CPU on every hop
    serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=quiet)
    serve.run(deployment(settings, scale), name=APP_NAME, route_prefix="/", blocking=False, logging_config=quiet)


def run_forever(settings: ServerSettings, scale: ServeScale, ready=lambda: None) -> None:
    """`sfumato serve --ray`: start, call `ready`, serve until interrupted; shut the application down after."""
    from ray import serve

    start(settings, scale)
    ready()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()


def build(args: dict[str, Any]):
    """A Ray Serve application builder for declarative deployments (`serve run sfumato.scale.serve:build k=v …`,
    KubeRay's RayService `import_path`). Arguments: model, data_dir, store, replicas, autoscale ("1,4"),
    gpus_per_replica, cpus_per_replica, allowed_hosts (comma-separated), max_batch_size, queue_size, safety.
    The API key comes from $SFUMATO_API_KEY (a secret), never from the config; without one the application
    answers loopback only, as `sfumato serve` does. Without a `store` argument, $SFUMATO_STORE names the store (a
    PostgreSQL URL with its password belongs in a secret too)."""
    import os

    known = {"model", "data_dir", "store", "replicas", "autoscale", "gpus_per_replica", "cpus_per_replica",
             "allowed_hosts", "max_batch_size", "queue_size", "safety", "store_lease_s"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidRequest(f"unknown sfumato application arguments: {', '.join(unknown)}")
    key = os.environ.get("SFUMATO_API_KEY") or None
    hosts = tuple(h.strip() for h in str(args.get("allowed_hosts", "")).split(",") if h.strip())
    settings = ServerSettings(host="0.0.0.0" if key else "127.0.0.1", model=args.get("model"), api_key=key,
                              data_dir=Path(args.get("data_dir", "/tmp/sfumato-server")),
                              store=args.get("store") or os.environ.get("SFUMATO_STORE"), allowed_hosts=hosts,
                              max_batch_size=int(args.get("max_batch_size", 8)),
                              queue_size=int(args.get("queue_size", 256)), safety=args.get("safety", "blur"),
                              store_lease_s=float(args.get("store_lease_s", 30.0))).check()
    scale = ServeScale(replicas=int(args.get("replicas", 1)),
                       autoscale=parse_autoscale(args["autoscale"]) if args.get("autoscale") else None,
                       gpus_per_replica=float(args.get("gpus_per_replica", 0)),
                       cpus_per_replica=float(args.get("cpus_per_replica", 1))).check()
    return deployment(settings, scale)
