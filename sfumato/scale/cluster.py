"""Joining Ray: a local instance or a cluster address, with the environment every worker needs."""

from __future__ import annotations

import logging
import os

FORWARDED_ENV = ("SFUMATO_HOME", "SFUMATO_MODEL", "SFUMATO_SAFETY", "SFUMATO_SAFETY_POLICY", "HF_HUB_OFFLINE",
                 "TRANSFORMERS_OFFLINE")


def worker_env() -> dict[str, str]:
    """The sfumato settings of this shell, for actors and replicas (models home, offline flags)."""
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def connect(address: str | None) -> None:
    """Start (or join) Ray: "local" or None: this machine; anything else: a cluster (`ray://host:10001`, `host:6379`).
    Ray already started in this process (a test's instance) is used as it is."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=None if address in (None, "local") else address, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": worker_env()})
    logging.getLogger("ray").setLevel(logging.WARNING)


def fit_threads() -> None:
    """Inside a Ray actor or replica: torch uses as many threads as CPUs Ray gave it (never every core of the node:
    N actors with all-core thread pools on one machine spin against each other)."""
    try:
        import ray

        if not ray.is_initialized():
            return
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker
        return
    if cpus:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
