"""`sfumato batch`: run a plan's pending rows through `Engine.generate_many`, in this process or on Ray Data.

The same `BatchWorker` does the work in both modes: it owns one `Engine`, turns a batch of plan rows into requests,
generates them together where they are compatible (`Engine.generate_many`), writes each image's PNG (with its
infotext and replay record) and returns one manifest entry per image. The driver appends the entries to
`OUT/manifest.jsonl` as they arrive (the journal a rerun resumes from) and writes `OUT/manifest.parquet` at the end.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from sfumato.errors import InvalidRequest, SfumatoError
from sfumato.scale import plan as plans

MANIFEST_COLUMNS = ("row", "image", "of", "path", "seed", "subseed", "request", "seconds", "worker", "finished",
                    "blocked", "error")


@dataclass
class BatchSettings:
    """How the engine runs inside each worker (the CLI's generate options that are not request fields)."""

    device: str | None = None
    dtype: str | None = None
    safety: Any = None  # a SafetySettings, or None for the defaults (blur flagged images, packaged prompt policy)
    compile: str | None = None
    memory: Any = None  # a MemorySettings, or None


@dataclass
class BatchReport:
    rows: int  # rows in the plan
    skipped: int  # rows done by an earlier run
    made: int  # rows made now
    images: int  # images written now
    failed: int  # rows that failed now (a rerun retries them)
    seconds: float
    manifest: Path


class BatchWorker:
    """One `Engine`; called with a batch of plan lines (a `text` column, as Ray Data's `read_text` gives them),
    returns the manifest entries of their images (an `entry` column of JSON)."""

    def __init__(self, out: str, settings: BatchSettings | None = None):
        from sfumato.engine import Engine
        from sfumato.safety.classifier import SafetySettings

        from sfumato.scale.cluster import fit_threads

        fit_threads()
        settings = settings or BatchSettings()
        self.out = Path(out)
        self.images_dir = self.out / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.engine = Engine(device=settings.device, dtype=settings.dtype, safety=settings.safety or SafetySettings(), compile=settings.compile,
                             memory=settings.memory)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._model_sha: dict[str, str] = {}  # model path -> SHA-256 for the PNG records (once per model, not per row)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [plans.PlanRow.from_line(str(line)) for line in batch["text"]]
        entries: list[dict[str, Any]] = []
        started = time.perf_counter()
        try:
            results = self.engine.generate_many([r.request for r in rows])
        except SfumatoError:  # one bad row must not cost its batch-mates: run them one by one
            results = None
        share = (time.perf_counter() - started) / max(1, sum(len(r.images) for r in results or []))
        for index, planned in enumerate(rows):
            if results is None:
                try:
                    result = self.engine.generate_many([planned.request])[0]
                except SfumatoError as exc:
                    entries.append(self._entry(planned, 0, error=str(exc)))
                    continue
            else:
                result = results[index]
            entries.extend(self._save(planned, result, share if results is not None else None))
        return {"entry": [json.dumps(e) for e in entries]}  # one JSON column: no type guessing across workers

    def _entry(self, planned: plans.PlanRow, image: int, **extra: Any) -> dict[str, Any]:
        return {"row": planned.row, "image": image, "of": planned.images, "path": None,
                "seed": planned.request.seed + image, "subseed": planned.request.subseed + image,
                "request": planned.request.to_json(), "seconds": None, "worker": self.worker,
                "finished": time.time(), "blocked": None, "error": None, **extra}

    def _save(self, planned: plans.PlanRow, result, seconds: float | None) -> list[dict[str, Any]]:
        """Write a row's PNGs; `seconds`: this image's share of its engine call (None: the row ran alone)."""
        from sfumato.models.home import sha256
        from sfumato.output import save_generated

        if not result.images:
            return [self._entry(planned, 0, blocked="; ".join(result.blocked) or "no image was produced",
                                seconds=result.seconds)]
        model = str(result.request.model)
        if model not in self._model_sha:
            self._model_sha[model] = sha256(Path(model))
        sha = self._model_sha[model]
        entries = []
        for index, item in enumerate(result.images):
            name = plans.image_name(planned.row, index, planned.images)
            save_generated(item, self.images_dir / name, sha)
            entries.append(self._entry(planned, index, path=f"images/{name}", seed=item.seed, subseed=item.subseed,
                                       seconds=round(seconds if seconds is not None else
                                                     result.seconds / len(result.images), 4)))
        return entries


def _chunks(out: Path, size: int) -> Iterator[dict[str, list]]:
    """The pending plan lines in batches of `size` (the shape Ray Data hands an actor)."""
    batch: list[str] = []
    for line in plans.pending_lines(out):
        batch.append(line)
        if len(batch) == size:
            yield {"text": batch}
            batch = []
    if batch:
        yield {"text": batch}


def run_batch(jobs: Path, out: Path, model: str | None = None, seed: int | None = None, batch_size: int = 4,
              settings: BatchSettings | None = None, ray: str | None = None, replicas: int = 1,
              gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
              progress: Callable[[int, int], None] | None = None) -> BatchReport:
    """Plan (or reuse the plan), make every row not done yet, write the manifest. `ray`: None runs here; "local"
    starts (or joins) a Ray instance on this machine; anything else is a Ray address (`ray://…`, `HOST:PORT`)."""
    if batch_size < 1 or batch_size > 64:
        raise InvalidRequest("--batch-size must be 1..64")
    if replicas < 1 or gpus_per_replica < 0 or cpus_per_replica <= 0:
        raise InvalidRequest("--replicas must be >= 1, --gpus-per-replica >= 0 and --cpus-per-replica > 0")
    started = time.perf_counter()
    header = plans.make_plan(jobs, out, model, seed)
    done = plans.done_rows(out)
    pending_rows, pending_images = plans.write_pending(out, done, rows_per_file=4 * batch_size)
    made = images = failed = 0
    settings = settings or BatchSettings()
    with open(out / plans.JOURNAL, "a", encoding="utf-8") as journal:
        if pending_rows:
            batches = (_run_on_ray(out, settings, batch_size, ray, replicas, gpus_per_replica, cpus_per_replica)
                       if ray else _run_here(out, settings, batch_size))
            for entries in batches:
                rows_now: dict[str, bool] = {}
                for line in entries["entry"]:
                    entry = json.loads(str(line))
                    journal.write(json.dumps(entry) + "\n")
                    rows_now[entry["row"]] = rows_now.get(entry["row"], True) and not entry.get("error")
                    images += bool(entry.get("path"))
                journal.flush()
                os.fsync(journal.fileno())
                made += sum(rows_now.values())
                failed += sum(not ok for ok in rows_now.values())
                if progress:
                    progress(made + failed, pending_rows)
    manifest = write_manifest(out)
    return BatchReport(header["rows"], len(done), made, images, failed, time.perf_counter() - started, manifest)


def _run_here(out: Path, settings: BatchSettings, batch_size: int) -> Iterator[dict[str, list]]:
    worker = BatchWorker(str(out), settings)
    for batch in _chunks(out, batch_size):
        yield worker(batch)


def _run_on_ray(out: Path, settings: BatchSettings, batch_size: int, address: str, replicas: int, gpus: float,
                cpus: float) -> Iterator[dict[str, list]]:
    """The pending rows through Ray Data: read as a stream, `map_batches` over an actor pool of `BatchWorker`s."""
    import ray

    from sfumato.scale.cluster import connect

    connect(address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # plan lines as text (no type guessing: row ids like 000001 stay strings), a block per pending file so the
    # actors share them; reading is light and takes no CPU slot, so N actors can hold every core of a small machine
    dataset = ray.data.read_text(str((out / plans.PENDING).resolve()), num_cpus=0)
    made = dataset.map_batches(BatchWorker, fn_constructor_kwargs={"out": str(out.resolve()), "settings": settings},
                               batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=replicas),
                               num_gpus=gpus or None, num_cpus=cpus, batch_format="numpy")
    for batch in made.iter_batches(batch_size=None, batch_format="numpy"):
        yield {k: list(v) for k, v in batch.items()}


def write_manifest(out: Path, chunk: int = 10_000) -> Path:
    """`out/manifest.parquet`: the journal's latest entry per (row, image), in plan order, written in chunks (the
    journal is read by offset, so memory holds an index, not the entries)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    order: dict[str, int] = {}
    with open(out / plans.PLAN, encoding="utf-8") as plan:
        for index, line in enumerate(plan):
            order[json.loads(line)["row"]] = index
    offsets = plans.journal_offsets(out)
    keys = sorted((k for k in offsets if k[0] in order), key=lambda k: (order[k[0]], k[1]))
    schema = pa.schema([("row", pa.string()), ("image", pa.int32()), ("of", pa.int32()), ("path", pa.string()),
                        ("seed", pa.int64()), ("subseed", pa.int64()), ("request", pa.string()),
                        ("seconds", pa.float64()), ("worker", pa.string()), ("finished", pa.float64()),
                        ("blocked", pa.string()), ("error", pa.string())])
    path = out / plans.MANIFEST
    partial = path.with_suffix(".part")
    with open(out / plans.JOURNAL, "rb") if keys else open(os.devnull, "rb") as journal, \
            pq.ParquetWriter(partial, schema) as writer:
        for first in range(0, max(len(keys), 1), chunk):
            rows = []
            for key in keys[first:first + chunk]:
                journal.seek(offsets[key])
                entry = json.loads(journal.readline())
                rows.append({c: entry.get(c) for c in MANIFEST_COLUMNS})
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    partial.replace(path)
    return path


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
