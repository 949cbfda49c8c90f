"""Server settings and request limits: one object, filled from CLI flags, passed to every part."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfumato.errors import InvalidRequest
from sfumato.limits import Limits

__all__ = ["Limits", "ServerSettings", "is_loopback"]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in logs or reprs
    insecure_no_auth: bool = False
    max_batch_size: int = 8
    batch_wait_ms: float = 30.0  # a batch that is not full waits this long for more compatible jobs
    queue_size: int = 256
    data_dir: Path = Path("sfumato-server")
    store: str | None = None  # the job store: None/"sqlite" (data_dir/jobs.sqlite3) or a postgresql://… URL
    store_lease_s: float = 30.0  # shared stores: a silent owner's running jobs are claimed again after this
    shared_store: bool = False  # other servers use the same SQLite store (Ray Serve replicas): leases, no takeover
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback names and the bind address
    safety: str = "blur"
    safety_threshold: float = 0.8
    safety_policy: str | None = None
    preview: str = "cheap"  # step previews while a client watches: cheap (latent->RGB map), full (VAE), off
    comfy_frontend: bool = False  # serve ComfyUI's own front end (the comfyui-frontend-package) at /comfy/
    limits: Limits = field(default_factory=Limits)
    device: str | None = None
    compile: str | None = None  # torch.compile mode for the served models (speed.compiled), None: eager
    memory: Any = None  # memory.MemorySettings: low-memory modes and 8-bit weights for the served models

    def check(self) -> ServerSettings:
        """Refuse settings that would expose an open server; validate sizes."""
        if not is_loopback(self.host) and not self.api_key and not self.insecure_no_auth:
            raise InvalidRequest(f"refusing to listen on {self.host} without --api-key (anyone on the network could "
                                 "use it); pass --api-key KEY, or --insecure-no-auth if you really mean it")
        if self.max_batch_size < 1 or self.queue_size < 1:
            raise InvalidRequest("--max-batch-size and --queue-size must be at least 1")
        if self.preview not in ("cheap", "full", "off"):
            raise InvalidRequest("--preview must be cheap, full or off")
        if self.compile not in (None, "default", "reduce-overhead", "max-autotune"):
            raise InvalidRequest("--compile must be default, reduce-overhead or max-autotune")
        if not 1 <= self.store_lease_s <= 3600:
            raise InvalidRequest("--store-lease must be between 1 and 3600 seconds")
        if self.limits.max_body_bytes < self.limits.max_upload_bytes * 4 // 3 + 1024:
            raise InvalidRequest("--max-body-mb must hold one upload in base64 (4/3 of --max-upload-mb)")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise InvalidRequest("--batch-wait-ms must be between 0 and 10000")
        return self


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
