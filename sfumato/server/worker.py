"""The one thread that owns the engine: takes queued jobs, batches compatible ones, stores results.

Request handling never waits on it: routes only read and write the job store and the live
`Progress`. Jobs that share model, size, sampler and steps run together up to `max_batch_size`
images (`Engine.generate_many`; each image equals its job run alone); a batch that is not full waits for more
jobs first while they keep coming (clients that just got a result are resubmitting, one after another): until it is
full, or `batch_wait_s` passes without a new one, or BATCH_WAIT_CAP times that in all. Cancelling a job of a running
batch stops the batch between two steps; its other jobs go back to the queue.
"""

from __future__ import annotations

import io
import itertools
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field

from sfumato.engine import Engine, Interrupted, batch_key
from sfumato.errors import SfumatoError
from sfumato.models.home import sha256
from sfumato.output import save_generated
from sfumato.requests import GenerationRequest
from sfumato.server.store import Job, JobStore

log = logging.getLogger("sfumato.server")
PREVIEW_EVERY_S = 0.5
WATCH_S = 2.0  # previews keep being made this long after a client last asked
CLAIM_CHECK_S = 1.0  # shared stores: how often a running batch checks that its jobs are still its own
PREVIEW_MODES = ("cheap", "full", "off")
BATCH_WAIT_CAP = 10  # a batch that keeps growing waits at most this many `batch_wait_s` in all


@dataclass
class Progress:
    """What the running batch is doing now (read by /progress, SSE and /metrics)."""

    job_ids: list[str] = field(default_factory=list)
    step: int = 0
    total: int = 0
    started: float = 0.0
    preview_png: bytes | None = None
    preview_step: int = 0
    node: str | None = None  # a ComfyUI job's node running now
    watched_until: float = 0.0  # time.monotonic() until which a client wants previews (SSE, /progress)
    steps_done: int = 0  # lifetime counters for /metrics
    step_seconds: float = 0.0


class Worker:
    def __init__(self, store: JobStore, engine: Engine, max_batch_size: int, batch_wait_s: float = 0.0,
                 preview: str = "cheap"):
        self.store, self.engine, self.max_batch_size, self.batch_wait_s = store, engine, max_batch_size, batch_wait_s
        self.preview = preview  # cheap (latent->RGB map), full (VAE decode) or off
        self.progress = Progress()
        self._cancelled: set[str] = set()
        self._store_failed = False  # a store write failed mid-batch (a full disk): some job may be left `running`
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_step = 0.0
        self._last_preview = 0.0
        self._keys: dict[str, tuple] = {}  # job id -> batch key (computed once per job)
        self._serial = itertools.count()  # keeps the keys of jobs that must run alone distinct
        self._last_stale_check = 0.0  # shared stores: when this worker last re-queued dead replicas' jobs
        self._last_claim_check = 0.0  # ... and when the running batch last checked its jobs are still its own
        # a cancel or a stop takes effect inside a step, at the next UNet/VAE block (in-memory flags only)
        engine.should_stop = lambda: self._stop.is_set() or any(j in self._cancelled for j in self.progress.job_ids)
        self._comfy = None  # the ComfyUI executor (created at the first ComfyUI job; keeps its node cache)
        self.comfy_names = None  # () -> comfy.names.Names, set by the service
        self.comfy_check = None  # GenerationRequest -> None: the server's limits on each request a graph makes
        self._thread = threading.Thread(target=self._loop, name="sfumato-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Stop soon: the running batch stops at its next step and is requeued (no partial images are kept)."""
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (a running one stops at its next step)."""
        if not self.store.cancel(job_id):
            return False
        self._cancelled.add(job_id)
        return True

    def watch(self) -> None:
        """A client is looking at the progress: make previews for the next WATCH_S seconds."""
        self.progress.watched_until = time.monotonic() + WATCH_S

    def interrupt(self) -> list[str]:
        """Cancel whatever runs now (A1111 /interrupt)."""
        ids = list(self.progress.job_ids)
        for job_id in ids:
            self.cancel(job_id)
        return ids

    # ------------------------------------------------------------------ loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._next()
            except Exception as exc:  # the store itself failed (a full disk): keep the worker, retry shortly
                log.error("worker: %s", exc if isinstance(exc, SfumatoError) else traceback.format_exc())
                self._store_failed = True
                self._stop.wait(1.0)

    def _next(self) -> None:
        """Pick, start and run one batch (or wait a little when nothing is queued)."""
        if self._store_failed:  # nothing runs between batches: jobs left `running` by the failure run again
            self.store.requeue_running()
            self._store_failed = False
        if not self.store.exclusive and time.monotonic() - self._last_stale_check > self.store.lease_s / 3:
            self._last_stale_check = time.monotonic()
            self.store.requeue_stale()  # a killed replica's jobs: claimed again here or by another
        batch = self._filled(self._pick())
        jobs = [job for job in batch if self.store.start(job.id)]
        for job in batch:
            self._keys.pop(job.id, None)
        if not jobs:
            self._wake.wait(0.5)
            self._wake.clear()
            return
        try:
            self._run(jobs)
        except Exception as exc:  # never let one bad batch kill the worker
            known = isinstance(exc, SfumatoError)
            message = str(exc) if known else "internal error while generating (see the server log)"
            if not known:
                log.error("batch failed:\n%s", traceback.format_exc())
            for job in jobs:
                try:
                    self.store.fail(job.id, message)
                except SfumatoError:  # the store cannot write either (disk full): queue it again once it can
                    self._store_failed = True

    def _filled(self, batch: list[Job]) -> list[Job]:
        """`batch` grown while compatible jobs keep arriving: until full, `batch_wait_s` after the last new one, or
        BATCH_WAIT_CAP times that in all (woken by every enqueue on this replica)."""
        cap = time.monotonic() + BATCH_WAIT_CAP * self.batch_wait_s
        deadline = time.monotonic() + self.batch_wait_s
        while batch and _images(batch) < self.max_batch_size and not self._stop.is_set():
            left = min(deadline, cap) - time.monotonic()
            if left <= 0:
                break
            self._wake.wait(left)
            self._wake.clear()
            grown = self._pick()
            if _images(grown) > _images(batch):
                deadline = time.monotonic() + self.batch_wait_s
            batch = grown
        return batch

    def _pick(self) -> list[Job]:
        """The oldest queued job and the compatible ones behind it, up to `max_batch_size` images (not started)."""
        self._cancelled.clear()  # nothing runs now; a cancel from here on finds its job queued or started
        queued = self.store.queued()
        self._keys = {job.id: self._keys[job.id] for job in queued if job.id in self._keys}
        if not queued:
            return []
        keys = {}
        for position, job in enumerate(queued):
            if job.id not in self._keys:
                try:
                    if "animation" in job.request or "comfy" in job.request:  # these jobs run alone
                        self._keys[job.id] = ("alone", next(self._serial))
                    else:
                        self._keys[job.id] = batch_key(GenerationRequest.from_dict(job.request), next(self._serial))
                except SfumatoError as exc:
                    self.store.fail(job.id, str(exc))
                    continue
            keys[job.id] = self._keys[job.id]
        queued = [j for j in queued if j.id in keys]
        if not queued:
            return []
        first = queued[0]
        batch = [first]
        for job in queued[1:]:
            if keys[job.id] == keys[first.id] and _images(batch) + _images([job]) <= self.max_batch_size:
                batch.append(job)
        return batch

    def _run(self, jobs: list[Job]) -> None:
        if "animation" in jobs[0].request:
            self._run_animation(jobs[0])
            return
        if "comfy" in jobs[0].request:
            self._run_comfy(jobs[0])
            return
        requests = [GenerationRequest.from_dict(job.request) for job in jobs]
        p = self.progress
        p.job_ids, p.step, p.total, p.started, p.preview_png = [j.id for j in jobs], 0, 0, time.time(), None
        self._last_step = time.perf_counter()
        try:
            results = self.engine.generate_many(requests, self._on_step, self._on_latents)
        except Interrupted:
            for job in jobs:
                if job.id not in self._cancelled:
                    self.store.requeue(job.id)  # batch-mates of a cancelled job run again
            return
        except SfumatoError as exc:
            for job in jobs:
                self.store.fail(job.id, str(exc))
            return
        finally:
            p.job_ids = []
        model_sha = sha256(self.engine.model_path(requests[0].model))
        for job, result in zip(jobs, results):
            if job.id in self._cancelled:
                continue
            if not result.images:
                self.store.fail(job.id, "; ".join(result.blocked) or "no image was produced")
                continue
            ids = []
            try:
                for k, item in enumerate(result.images):
                    image_id = _image_id(job, k)
                    save_generated(item, self.store.images_dir / f"{image_id}.png", model_sha)
                    ids.append(image_id)
            except SfumatoError as exc:  # disk full: this job fails cleanly, its saved images are removed
                self._remove(ids)
                self.store.fail(job.id, str(exc))
                continue
            completed = self.store.complete(job.id, {
                "images": ids, "seeds": [i.seed for i in result.images], "subseeds": [i.subseed for i in result.images],
                "infotexts": [i.infotext for i in result.images], "nsfw": [i.nsfw for i in result.images],
                "blocked": result.blocked, "seconds": round(result.seconds, 3), "request": result.request.to_dict(),
                "batch_jobs": len(jobs)})
            if not completed:  # cancelled meanwhile, or another replica claimed it again (this one looked dead)
                self._remove(ids)

    def _remove(self, image_ids: list[str]) -> None:
        for image_id in image_ids:
            (self.store.images_dir / f"{image_id}.png").unlink(missing_ok=True)

    def _run_animation(self, job: Job) -> None:
        """An animation job: frames saved as images of the job, videos under videos/, metrics in the result."""
        from sfumato.animation.request import AnimationRequest
        from sfumato.animation.run import animate
        from sfumato.animation.video import write_video

        p = self.progress
        p.job_ids, p.step, p.total, p.started, p.preview_png = [job.id], 0, 0, time.time(), None
        self._last_step = time.perf_counter()
        try:
            request = AnimationRequest.from_dict(job.request["animation"]).validate()
            result = animate(self.engine, request, self._on_step)
        except Interrupted:
            if job.id not in self._cancelled:
                self.store.requeue(job.id)
            return
        except SfumatoError as exc:
            self.store.fail(job.id, str(exc))
            return
        finally:
            p.job_ids = []
        if job.id in self._cancelled:
            return
        model_sha = sha256(self.engine.model_path(result.frames[0].request.model))
        ids = [_image_id(job, k) for k in range(len(result.frames))]
        videos_dir = self.store.data_dir / "videos"
        try:
            for image_id, item in zip(ids, result.frames):
                save_generated(item, self.store.images_dir / f"{image_id}.png", model_sha)
            videos_dir.mkdir(exist_ok=True)
            videos = {kind: write_video([f.image for f in result.frames], videos_dir / f"{job.id}.{kind}", request.fps)
                      for kind in request.formats}
        except (SfumatoError, OSError) as exc:  # disk full: the job fails cleanly, nothing half-written stays
            self._remove(ids)
            for kind in request.formats:
                (videos_dir / f"{job.id}.{kind}").unlink(missing_ok=True)
            self.store.fail(job.id, str(exc))
            return
        completed = self.store.complete(job.id, {
            "images": ids, "videos": {kind: f"/api/v1/videos/{path.name}" for kind, path in videos.items()},
            "metrics": result.metrics, "seeds": [f.seed for f in result.frames],
            "infotexts": [f.infotext for f in result.frames], "seconds": round(result.seconds, 3),
            "request": request.to_dict()})
        if not completed:
            self._remove(ids)

    def _run_comfy(self, job: Job) -> None:
        """A ComfyUI API-format prompt (`sfumato.comfy`): each output node's images saved as images of the job, with
        ComfyUI's `prompt` (and `workflow`) PNG chunks beside sfumato's; outputs in ComfyUI's history shape."""
        from sfumato.comfy.executor import Executor
        from sfumato.comfy.png import save_output

        record = job.request["comfy"]
        p = self.progress
        p.job_ids, p.step, p.total, p.started, p.preview_png, p.node = [job.id], 0, 0, time.time(), None, None
        self._last_step = time.perf_counter()
        if self._comfy is None:  # kept between jobs: ComfyUI's cache of unchanged node outputs
            self._comfy = Executor(self.engine, self.comfy_names(), self.store.data_dir / "comfy-work")
        self._comfy.names = self.comfy_names()
        self._comfy.check = self.comfy_check

        def on_node(node_id: str, _class_type: str) -> None:
            p.node = node_id
            self._check_cancelled()

        try:
            outputs, cached = self._comfy.run(record["prompt"], on_node, self._on_step, self._on_latents)
        except Interrupted:
            if job.id not in self._cancelled:
                self.store.requeue(job.id)
            return
        except SfumatoError as exc:
            self.store.fail(job.id, f"{p.node or ''}: {exc}" if p.node else str(exc))
            return
        finally:
            p.job_ids, p.node = [], None
        if job.id in self._cancelled:
            return
        ids, by_node, infotexts = [], {}, []
        try:
            for output in outputs:
                for k, image in enumerate(output.images.images):
                    image_id = _image_id(job, len(ids))
                    save_output(self.store.images_dir / f"{image_id}.png", image, output.images, k, record)
                    ids.append(image_id)
                    infotexts.append(output.images.infotexts[k] if k < len(output.images.infotexts) else "")
                    by_node.setdefault(output.node_id, []).append(
                        {"filename": f"{image_id}.png", "subfolder": "", "type": output.kind})
        except (SfumatoError, OSError) as exc:
            self._remove(ids)
            self.store.fail(job.id, str(exc))
            return
        if not self.store.complete(job.id, {"images": ids, "infotexts": infotexts, "comfy_outputs": by_node,
                                            "cached": cached, "seconds": round(time.time() - p.started, 3)}):
            self._remove(ids)

    def _check_cancelled(self) -> None:
        ids = self.progress.job_ids
        if not self.store.exclusive and time.monotonic() - self._last_claim_check > CLAIM_CHECK_S:
            self._last_claim_check = time.monotonic()  # cancelled through another replica, or claimed again
            self._cancelled.update(self.store.lost(ids))
        if self._stop.is_set() or any(job_id in self._cancelled for job_id in ids):
            raise Interrupted()  # stopping: the batch is requeued; cancelled: its jobs stay cancelled

    def _on_step(self, done: int, total: int) -> None:
        now = time.perf_counter()
        p = self.progress
        p.step, p.total = done, total
        p.steps_done += 1
        p.step_seconds += now - self._last_step
        self._last_step = now
        self._check_cancelled()

    def _on_latents(self, latents) -> None:
        """A preview every PREVIEW_EVERY_S, only while somebody watches (nobody pays for unseen previews)."""
        now = time.monotonic()
        if self.preview == "off" or now > self.progress.watched_until or now - self._last_preview < PREVIEW_EVERY_S:
            return
        self._last_preview = now
        buffer = io.BytesIO()
        self.engine.preview_image(latents, full=self.preview == "full").save(buffer, format="PNG")
        self.progress.preview_png, self.progress.preview_step = buffer.getvalue(), self.progress.step


def _image_id(job: Job, index: int) -> str:
    """`JOB-K`; a job run again after its first claim was lost gets `JOB-aN-K`: the attempts never share a file."""
    return f"{job.id}-{index}" if job.attempts == 0 else f"{job.id}-a{job.attempts + 1}-{index}"


def _images(jobs: list[Job]) -> int:
    return sum(int(job.request.get("batch_size", 1)) for job in jobs)
