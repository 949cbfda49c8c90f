"""Batch plans: a jobs file (JSONL, CSV or Parquet; one generation request per row) -> `OUT/plan.jsonl` with every
row's seeds fixed, so that a run is reproducible and can be resumed by running it again.

A row holds the native request fields (`GenerationRequest`; a file with only a `prompt` column works); an `id`
column names the row's images, else its position does. Empty cells and nulls mean the field's default.
Rows are read and written one at a time: memory stays flat for any number of rows.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sfumato.errors import InvalidRequest, SfumatoError
from sfumato.requests import GenerationRequest, MAX_SEED

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
ROW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PLAN, PENDING, JOURNAL, MANIFEST = "plan.jsonl", "pending", "manifest.jsonl", "manifest.parquet"


@dataclass
class PlanRow:
    row: str  # the row's id: its images are OUT/images/ROW.png (ROW-K.png for several)
    request: GenerationRequest  # seeds fixed
    images: int  # how many images the row makes (batch_size x batch_count)

    def to_line(self) -> str:
        return json.dumps({"row": self.row, "images": self.images, "request": self.request.to_json()})

    @classmethod
    def from_line(cls, line: str) -> "PlanRow":
        data = json.loads(line)
        return cls(data["row"], GenerationRequest.from_dict(json.loads(data["request"])), data["images"])


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, fields) for every row of a JSONL, CSV or Parquet jobs file, streamed."""
    try:
        yield from _read_rows(path)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise InvalidRequest(f"{path}: cannot read it as a jobs file ({exc})") from None
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet
        if type(exc).__module__.startswith("pyarrow"):
            raise InvalidRequest(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        raise


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    kind = check_jobs_file(path)
    if kind == "jsonl":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    fields = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"{path} line {number}: not JSON ({exc.msg})") from None
                if isinstance(fields, str):
                    fields = {"prompt": fields}
                if not isinstance(fields, dict):
                    raise InvalidRequest(f"{path} line {number}: a row is a JSON object of request fields")
                yield number, fields
    elif kind == "csv":
        with open(path, encoding="utf-8", newline="") as handle:
            for number, fields in enumerate(csv.DictReader(handle), 2):
                yield number, _from_csv(fields, f"{path} line {number}")
    else:
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for fields in batch.to_pylist():
                number += 1
                yield number, fields


def check_jobs_file(path: Path) -> str:
    """The jobs file's format (jsonl, csv, parquet), or one line saying why it cannot be read."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InvalidRequest(f"{path}: a jobs file is .jsonl, .csv or .parquet")
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such jobs file")
    return kind


def _field_kinds() -> dict[str, str]:
    hints = typing.get_type_hints(GenerationRequest)
    kinds = {}
    for f in dataclasses.fields(GenerationRequest):
        text = str(hints[f.name])
        kinds[f.name] = ("bool" if hints[f.name] is bool else "int" if "int" in text and "float" not in text
                         and "list" not in text and "dict" not in text else "float" if "float" in text
                         and "list" not in text else "json" if "list" in text or "dict" in text else "str")
    return kinds


def _from_csv(fields: dict[str, str | None], where: str) -> dict[str, Any]:
    """CSV cells are text: numbers, booleans and JSON lists (`loras`, `controls`) by the request field's type."""
    kinds = _field_kinds()
    out: dict[str, Any] = {}
    for name, text in fields.items():
        if name is None or text is None or text == "":
            continue
        kind = kinds.get(name, "str")
        try:
            if kind == "int":
                out[name] = int(text)
            elif kind == "float":
                out[name] = float(text)
            elif kind == "bool":
                if text.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                out[name] = text.strip().lower() in ("true", "1", "yes")
            elif kind == "json":
                out[name] = json.loads(text)
            else:
                out[name] = text
        except (ValueError, json.JSONDecodeError):
            raise InvalidRequest(f"{where}: {name} {text!r} is not a valid {kind}") from None
    return out


def row_request(fields: dict[str, Any], position: int, model: str | None, rng: random.Random,
                where: str) -> PlanRow:
    """One jobs-file row (the `position`-th, which names it without an id) -> its plan row: validated, `model` filled in, -1 seeds drawn from `rng`."""
    fields = {k: v for k, v in fields.items() if v is not None}
    row = str(fields.pop("id", f"{position:06d}"))
    if not ROW_ID.match(row):
        raise InvalidRequest(f"{where}: id {row!r} must be 1-100 letters, digits, '.', '_' or '-'")
    if model and "model" not in fields:
        fields["model"] = model
    try:
        request = GenerationRequest.from_dict(fields).validate()
    except SfumatoError as exc:
        raise InvalidRequest(f"{where}: {exc}") from None
    except TypeError as exc:  # a field of the wrong shape the dataclass itself refused
        raise InvalidRequest(f"{where}: {exc}") from None
    return PlanRow(row, request.with_seeds_resolved(rng), request.batch_size * request.batch_count)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_plan(jobs: Path, out: Path, model: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """Write `out/plan.jsonl` (once: a second run of the same jobs file reuses it) and return its header.

    Seeds are fixed here: a row's -1 seeds come from a generator seeded by the plan seed and the row id, so the
    plan is the same whether written once or again with the same `seed`."""
    check_jobs_file(jobs)
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    header_path, plan_path = out / "plan.json", out / PLAN
    sha = file_sha256(jobs)
    if header_path.is_file() and plan_path.is_file():
        header = json.loads(header_path.read_text())
        if header.get("jobs_sha256") != sha:
            raise InvalidRequest(f"{out} holds the plan of another jobs file ({header.get('jobs')}); use another "
                                 f"--out, or delete {header_path.name} to plan again")
        return header
    base = seed if seed is not None else random.randint(0, MAX_SEED)
    rows, images, seen = 0, 0, set()
    partial = plan_path.with_suffix(".part")
    with open(partial, "w", encoding="utf-8") as handle:
        for position, (number, fields) in enumerate(read_rows(jobs), 1):
            where = f"{jobs} line {number}"
            rng = random.Random(f"{base}:{fields.get('id', position)}")
            planned = row_request(fields, position, model, rng, where)
            if planned.row in seen:
                raise InvalidRequest(f"{where}: id {planned.row!r} is used twice")
            seen.add(planned.row)
            handle.write(planned.to_line() + "\n")
            rows, images = rows + 1, images + planned.images
    if rows == 0:
        partial.unlink()
        raise InvalidRequest(f"{jobs} has no rows")
    partial.replace(plan_path)
    header = {"jobs": str(jobs), "jobs_sha256": sha, "seed": base, "rows": rows, "images": images}
    header_path.write_text(json.dumps(header, indent=2))
    return header


def image_name(row: str, index: int, images: int) -> str:
    return f"{row}.png" if images == 1 else f"{row}-{index}.png"


def done_rows(out: Path) -> set[str]:
    """Rows whose images are all recorded in the journal and whole on disk (a killed run's half-written rows and
    rows that failed are not done: a rerun makes them). Keeps a few fields per image, not the entries."""
    from sfumato.server.store import is_whole_png

    made: dict[str, tuple[int, dict[int, tuple[str | None, bool, bool]]]] = {}
    for entry in read_journal(out):
        images = made.setdefault(entry["row"], (entry["of"], {}))[1]
        images[entry["image"]] = (entry.get("path"), bool(entry.get("error")), bool(entry.get("blocked")))
        made[entry["row"]] = (entry["of"], images)
    done = set()
    for row, (expected, images) in made.items():
        if any(error for _, error, _ in images.values()):
            continue
        paths = [path for path, _, _ in images.values() if path]
        if any(blocked for _, _, blocked in images.values()) or (
                len(paths) == expected and all(is_whole_png(out / p) for p in paths)):
            done.add(row)
    return done


def journal_offsets(out: Path) -> dict[tuple[str, int], int]:
    """(row, image) -> byte offset of its latest journal line (what the manifest keeps)."""
    latest: dict[tuple[str, int], int] = {}
    path = out / JOURNAL
    if not path.is_file():
        return latest
    with open(path, "rb") as handle:
        while True:
            offset = handle.tell()
            line = handle.readline()
            if not line:
                return latest
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            latest[(entry["row"], entry["image"])] = offset


def read_journal(out: Path) -> Iterator[dict[str, Any]]:
    path = out / JOURNAL
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut
                continue


def write_pending(out: Path, done: set[str], rows_per_file: int = 32) -> tuple[int, int]:
    """`out/pending/part-N.jsonl`: the plan's rows not yet done (what this run makes), `rows_per_file` rows per
    file (one Ray Data block each, so the actors share them); (rows, images) in it."""
    import shutil

    folder = out / PENDING
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    rows = images = 0
    part = None
    with open(out / PLAN, encoding="utf-8") as plan:
        for line in plan:
            entry = json.loads(line)
            if entry["row"] in done:
                continue
            if rows % rows_per_file == 0:
                if part:
                    part.close()
                part = open(folder / f"part-{rows // rows_per_file:06d}.jsonl", "w", encoding="utf-8")
            part.write(line)
            rows, images = rows + 1, images + entry["images"]
    if part:
        part.close()
    return rows, images


def pending_lines(out: Path):
    """The pending plan lines, in plan order."""
    for part in sorted((out / PENDING).glob("part-*.jsonl")):
        with open(part, encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n")
