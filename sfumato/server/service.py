"""What every route shares: settings, the job store, the worker, the engine and the registry of names clients may
use (models, LoRAs, VAEs, control models), with the checks that turn a wire request into a queued job."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from sfumato.engine import Engine, default_model
from sfumato.errors import InvalidRequest, ModelNotFound, SfumatoError
from sfumato.models.catalog import list_models
from sfumato.models.vae import is_own
from sfumato import upscale as upscalers
from sfumato.requests import LATENT_UPSCALERS, GenerationRequest, UpscaleRequest
from sfumato.safety.classifier import SafetySettings
from sfumato.server.public import Names
from sfumato.server.settings import ServerSettings
from sfumato.server.open_store import open_store
from sfumato.server.store import FINAL, Job, QueueFull, is_whole_png
from sfumato.server.uploads import decode_base64, open_image, store_image
from sfumato.server.worker import Worker

RETRY_AFTER_S = 5
log = logging.getLogger("sfumato.server")


class Service:
    """Everything the routes share: settings, store, worker, engine and the model registry."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        safety = SafetySettings(settings.safety, settings.safety_threshold, settings.safety_policy)
        self.engine = Engine(device=settings.device, safety=safety, compile=settings.compile, memory=settings.memory,
                             limits=settings.limits, paths=False)
        self.store = open_store(settings.store, settings.data_dir, settings.queue_size, not settings.shared_store,
                                settings.store_lease_s)
        self._upscale_lock = threading.Lock()
        self.worker = Worker(self.store, self.engine, settings.max_batch_size, settings.batch_wait_ms / 1000,
                             settings.preview)
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._waiters_lock = threading.Lock()
        self.closing = False  # SIGTERM/SIGINT: the running batch is requeued, waiting callers get 503
        self.store.on_final.append(self._job_finished)
        self.models: dict[str, str] = {}
        self.current_model: str = ""
        self.current_vae: str = "Automatic"  # A1111's `sd_vae` option: the VAE of requests that name none
        self.current_clip_skip: int = 1  # A1111's `CLIP_stop_at_last_layers` option, for A1111 requests
        self.refresh_models()

    def refresh_models(self) -> None:
        """Model names clients may use: the server's model, the checkpoints in $SFUMATO_HOME/models and the embedded
        models."""
        from sfumato.models.embedded import embedded_models

        models = {}
        chosen = self.settings.model or default_model()
        if chosen:
            path = Path(chosen) if Path(chosen).exists() else None
            models[path.name if path else chosen] = str(path) if path else chosen
        for entry in list_models():
            if entry.kind == "checkpoint" and not entry.format.startswith(("pickle", "unsupported")):
                models.setdefault(entry.name, entry.path)
        for name, path in embedded_models().items():  # the shipped models, by name
            if str(path) not in models.values():
                models.setdefault(name, str(path))
        self.models = models
        entries = list_models()
        self.loras = {e.name: e.path for e in entries if e.kind == "lora" and e.format == "safetensors"}
        self.lora_types = {e.name: e.family for e in entries if e.kind == "lora" and e.format == "safetensors"}
        self.control_models = {e.name: e.path for e in entries
                               if e.kind == "controlnet" and not e.format.startswith("unsupported")}
        self.vaes = {Path(e.path).name: e.path for e in entries if e.kind == "vae"}
        if self.current_model not in models:
            self.current_model = next(iter(models), "")
        self.names = Names.of(self)  # how errors and job records name these files over the network

    def load_default_model(self) -> None:
        """Load the server's model now: a missing or broken model stops start-up instead of failing every job.

        The load runs in a short-lived thread, not the main one: a thread that has run torch's OpenMP code keeps an
        idle thread team, and the worker thread's own team then ran ~25 % slower on this 2-core CPU (measured:
        generate_many 18 vs 24-28 images/s). Keeping torch off the main thread keeps the worker at engine speed.
        """
        if not self.current_model:
            raise ModelNotFound("no model to serve: pass --model PATH or set SFUMATO_MODEL")
        failure: list[BaseException] = []

        def load() -> None:
            try:
                self.engine.load(self.models[self.current_model])
            except BaseException as exc:  # handed to the caller below
                failure.append(exc)

        loader = threading.Thread(target=load, name="sfumato-load")
        loader.start()
        loader.join()
        if failure:
            raise failure[0]

    def model_path(self, name: str | None) -> str:
        """Resolve a client's model name; never a filesystem path from the client."""
        if not name or name in ("dall-e-2", "dall-e-3", "gpt-image-1"):
            name = self.current_model
        name = name.split(" [")[0]  # A1111 titles carry " [hash]"
        if name not in self.models:
            raise ModelNotFound(f"model {name!r} not found (GET /sdapi/v1/sd-models lists the names)")
        return self.models[name]

    def vae_path(self, name: str | None) -> str | None:
        """A VAE name (GET /sdapi/v1/sd-vae; with or without `.safetensors`) -> its path in the models home;
        None, "Automatic" or "None" -> the model's own VAE. Paths are never accepted."""
        if is_own(name):
            return None
        plain = name.split(" [")[0].strip()
        path = self.vaes.get(plain) or next((p for n, p in self.vaes.items() if Path(n).stem == plain), None)
        if path is None:
            raise ModelNotFound(f"VAE {name!r} not found (GET /sdapi/v1/sd-vae lists the names)")
        return path

    def lora_paths(self, loras: list) -> list[tuple[str, float]]:
        """LoRA names (from GET /api/v1/loras) -> paths inside the models home; unknown names -> 404."""
        out = []
        for name, weight in loras:
            if name not in self.loras:
                raise ModelNotFound(f"LoRA {name!r} not found (GET /api/v1/loras lists the names)")
            out.append((self.loras[name], float(weight)))
        return out

    def control_model_path(self, name: str | None) -> str | None:
        """A control model name (GET /controlnet/model_list; A1111's "name [hash]" too) -> its path; None or "None"
        -> the default for the model (the shipped one for the embedded model). Paths are never accepted."""
        if name is None or name.strip() in ("", "None", "none"):
            return None
        plain = name.split(" [")[0].strip()
        if plain not in self.control_models:
            raise ModelNotFound(f"control model {name!r} not found (GET /controlnet/model_list lists the names)")
        return self.control_models[plain]

    def ip_adapter_fields(self, name: str | None, images: list) -> dict:
        """Over HTTP an IP-Adapter is a file name in $SFUMATO_HOME/models/ip-adapter and its images are base64."""
        from sfumato.control.ip_adapter import ip_adapter_dir

        if name is None:
            return {"ip_adapter": None, "ip_images": []}
        plain = name.split(" [")[0].strip()
        folder = ip_adapter_dir()
        listed = {p.stem: p for p in folder.glob("*.safetensors")} if folder.is_dir() else {}
        if plain not in listed:
            raise ModelNotFound(f"IP-Adapter {name!r} not found (GET /api/v1/ip-adapters lists the names)")
        if not isinstance(images, list) or len(images) > 8:
            raise InvalidRequest("ip_images must be a list of at most 8 base64 images")
        return {"ip_adapter": str(listed[plain]), "ip_image_encoder": None,
                "ip_images": [self.upload(image, f"ip_images[{k}]") for k, image in enumerate(images)]}

    def control_units(self, units: list) -> list[dict]:
        """Over HTTP a unit's `image`, `mask` and `effective_region_mask` are base64 images and its `model` a listed
        name."""
        from sfumato.control.units import MAX_UNITS

        if not isinstance(units, list) or len(units) > MAX_UNITS:
            raise InvalidRequest(f"controls must be a list of at most {MAX_UNITS} units")
        out = []
        for index, unit in enumerate(units):
            if not isinstance(unit, dict) or not isinstance(unit.get("image"), str) or not unit["image"]:
                raise InvalidRequest(f"control unit {index} needs an image (base64)")
            unit = dict(unit)
            unit["image"] = self.upload(unit["image"], f"control unit {index} image")
            for name in ("mask", "effective_region_mask"):
                if unit.get(name):
                    unit[name] = self.upload(unit[name], f"control unit {index} {name}")
            unit["model"] = self.control_model_path(unit.get("model"))
            out.append(unit)
        return out

    def request_from_wire(self, fields: dict[str, Any]) -> GenerationRequest:
        """A native job body (`JobRequest` fields) -> a request: LoRA names to paths, base64 images stored, control
        units and the IP-Adapter resolved to files in the models home."""
        fields = dict(fields)
        fields["loras"] = self.lora_paths(fields["loras"])
        if fields["init_image"]:
            fields["init_image"] = self.upload(fields["init_image"], "init_image")
        if fields["mask"]:
            fields["mask"] = self.upload(fields["mask"], "mask")
        if fields.get("reference_image"):
            fields["reference_image"] = self.upload(fields["reference_image"], "reference_image")
        fields["controls"] = self.control_units(fields["controls"])
        fields.update(self.ip_adapter_fields(fields["ip_adapter"], fields["ip_images"]))
        return GenerationRequest(**fields)

    def open_upload(self, data: bytes | str, what: str):
        """An uploaded image (raw bytes or base64), checked against the upload limits."""
        limits = self.settings.limits
        return open_image(decode_base64(data, limits, what) if isinstance(data, str) else data, limits, what)

    def keep(self, image) -> str:
        """Store an uploaded or derived image (PNG, named by content) and return the path a request may use."""
        return store_image(image, self.store.uploads_dir)

    def upload(self, data: bytes | str, what: str) -> str:
        return self.keep(self.open_upload(data, what))

    def check_limits(self, request: GenerationRequest) -> None:
        """What only the server limits: steps, images per request, listed upscaler names. Text, sizes, hires and SD
        upscale targets are checked by the engine's resolver, which runs with these same `Limits`."""
        limits = self.settings.limits
        if request.steps is not None and request.steps > limits.max_steps:
            raise InvalidRequest(f"steps {request.steps} is more than this server's limit of {limits.max_steps}")
        if request.batch_size * request.batch_count > limits.max_images:
            raise InvalidRequest(f"{request.batch_size * request.batch_count} images requested; at most "
                                 f"{limits.max_images} per request")
        for name in ("hires_upscaler", "init_upscaler", "sd_upscale_upscaler"):  # listed names only, never paths
            value = getattr(request, name)
            if value and value.lower() not in LATENT_UPSCALERS and (name != "sd_upscale_upscaler"
                                                                    or request.sd_upscale > 1):
                upscalers.find(value, paths=False)

    def upscale(self, image, request: UpscaleRequest):
        """Upscale an uploaded image (one at a time: it is heavy on CPU and memory)."""
        request = dataclasses.replace(request).validate()
        for name in (request.upscaler, request.upscaler_2):
            if name:
                upscalers.find(name, paths=False)
        _, (width, height) = upscalers.extras_sizes(image.size, request.scale, request.width, request.height,
                                                    request.crop)
        if width * height > self.settings.limits.max_upscaled_pixels:
            raise InvalidRequest(f"{width}x{height} is more than this server's limit of "
                                 f"{self.settings.limits.max_upscaled_pixels} upscaled pixels")
        with self._upscale_lock:
            return self.engine.upscale(image, request)

    def submit(self, request: GenerationRequest) -> Job:
        """Validate, resolve (model, seeds, defaults, prompt policy) and queue durably."""
        request = dataclasses.replace(request, model=self.model_path(request.model), vae=self.vae_path(request.vae))
        self.check_limits(request)
        resolved = self.engine.resolve(request)
        self.check_limits(resolved)
        return self.enqueue(resolved.to_dict())

    def enqueue(self, record: dict[str, Any]) -> Job:
        """Queue a checked job record durably and wake the worker (429 when the queue is full)."""
        try:
            job = self.store.add(record)
        except QueueFull:
            raise HTTPException(429, "the queue is full; retry later",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        self.worker.wake()
        return job

    def _job_finished(self, job_id: str) -> None:
        """Wake the requests waiting on a job (called from the worker thread or a route)."""
        with self._waiters_lock:
            waiters = self._waiters.pop(job_id, [])
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that request's event loop has closed: nobody is waiting any more
                pass

    def begin_shutdown(self) -> None:
        """The server is asked to stop (a signal): the worker stops within a step and requeues its batch; every
        caller waiting for a job is answered at once (503) instead of holding the shutdown up."""
        self.closing = True
        self.worker.request_stop()
        with self._waiters_lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass

    async def wait(self, job: Job, timeout: float = 3600, http=None) -> Job:
        """Wait for a job to finish; a failed job raises its error (400), a cancelled one 409.

        The store wakes the waiter the moment the job finishes (clients resubmit at once, so the next
        batch fills up); a slow poll stays as a safety net. With the caller's `http` request: when the caller goes
        away (a client timeout, a closed connection), the job is cancelled — at once if queued, at the next UNet
        block if running — so an abandoned synchronous request costs nothing more (a client's retry runs anew).
        """
        deadline = time.monotonic() + timeout
        event = asyncio.Event()
        with self._waiters_lock:
            self._waiters.setdefault(job.id, []).append((asyncio.get_running_loop(), event))
        try:
            while True:
                current = self.store.get(job.id)
                if current.status in FINAL:
                    break
                if self.closing:
                    raise HTTPException(503, f"the server is shutting down; job {job.id} stays queued for the next "
                                             f"start: poll /api/v1/jobs/{job.id}")
                if http is not None and await http.is_disconnected():
                    self.worker.cancel(job.id)
                    raise HTTPException(499, f"the client went away; job {job.id} was cancelled")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HTTPException(504, f"job {job.id} is still {current.status}; poll /api/v1/jobs/{job.id}")
                try:  # a shared store's job may finish in another replica, which cannot wake us: poll faster
                    await asyncio.wait_for(event.wait(), timeout=min(left, 1.0 if self.store.exclusive else 0.1))
                except asyncio.TimeoutError:
                    pass
        finally:
            with self._waiters_lock:
                rest = [w for w in self._waiters.get(job.id, []) if w[1] is not event]
                if rest:
                    self._waiters[job.id] = rest
                else:
                    self._waiters.pop(job.id, None)
        if current.status == "failed":
            raise SfumatoError(current.error or "generation failed")
        if current.status == "cancelled":
            raise HTTPException(409, f"job {job.id} was cancelled")
        return current

    def image_file(self, image_id: str) -> Path:
        path = self.store.image_path(image_id)
        if path is None:
            raise HTTPException(404, "image not found")
        if not is_whole_png(path):  # damaged on disk (truncated copy, bad sector): never serve half a PNG
            raise HTTPException(410, f"image {image_id} is damaged on the server's disk; generate it again")
        return path


