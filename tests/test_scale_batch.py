"""`sfumato batch`: plans with fixed seeds, resumable runs, the Parquet manifest, and the same images on Ray Data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sfumato.cli import main
from sfumato.errors import InvalidRequest
from sfumato.output import read_png
from sfumato.scale import plan as plans
from sfumato.scale.batch import run_batch

ROWS = [{"prompt": "red apple", "steps": 3},
        {"prompt": "green apple", "steps": 3, "seed": 7, "cfg_scale": 5.0},
        {"id": "pear", "prompt": "pear", "steps": 3, "batch_size": 2},
        {"prompt": "banana", "steps": 2, "sampler": "DDIM"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def manifest(out):
    return pq.read_table(out / "manifest.parquet").to_pylist()


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_plan_fixes_seeds_the_same_from_jsonl_csv_and_parquet(tmp_path):
    rows = [{"prompt": "a", "steps": 3}, {"prompt": "b, c", "seed": 5, "tile": True, "loras": []}]
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", rows)
    (tmp_path / "jobs.csv").write_text('prompt,steps,seed,tile,loras\na,3,,,\n"b, c",,5,true,[]\n')
    columns = ["prompt", "steps", "seed", "tile", "loras"]
    pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), tmp_path / "jobs.parquet")
    planned = []
    for source in (jsonl, tmp_path / "jobs.csv", tmp_path / "jobs.parquet"):
        out = tmp_path / source.suffix[1:]
        header = plans.make_plan(source, out, seed=11)
        assert (header["rows"], header["images"], header["seed"]) == (2, 2, 11)
        planned.append((out / "plan.jsonl").read_text())
    assert planned[0] == planned[1] == planned[2]
    first = plans.PlanRow.from_line(planned[0].splitlines()[0])
    assert first.row == "000001" and first.request.seed != -1 and first.request.steps == 3
    assert plans.PlanRow.from_line(planned[0].splitlines()[1]).request.seed == 5
    # the same plan seed gives the same row seeds; another gives others
    plans.make_plan(jsonl, tmp_path / "again", seed=11)
    plans.make_plan(jsonl, tmp_path / "other", seed=12)
    assert (tmp_path / "again" / "plan.jsonl").read_text() == planned[0]
    assert (tmp_path / "other" / "plan.jsonl").read_text() != planned[0]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "steps": 0}', "line 2: steps must be"),
    ('{"steps": 3}', "line 2: a request needs a prompt"),
    ('{"prompt": "x", "colour": 1}', "line 2: unknown request field"),
    ('{"prompt": "x", "id": "../up"}', "line 2: id '../up' must be"),
    ('{"prompt": "x", "id": "000001"}', "line 2: id '000001' is used twice"),
    ('not json', "line 2: not JSON"),
    ('[1, 2]', "line 2: a row is a JSON object"),
])
def test_a_bad_row_is_refused_before_any_work_with_its_line(tmp_path, line, message):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        plans.make_plan(jobs, tmp_path / "out")
    assert not (tmp_path / "out" / "plan.jsonl").exists()


def test_batch_cli_makes_pngs_and_manifest_then_resumes(tmp_path, capsys):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", ROWS)
    out = tmp_path / "run"
    assert main(["batch", str(jobs), "--out", str(out), "--seed", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["made"], report["images"], report["skipped"], report["failed"]) == (4, 4, 5, 0, 0)
    entries = manifest(out)
    assert [(e["row"], e["image"], e["path"]) for e in entries] == [
        ("000001", 0, "images/000001.png"), ("000002", 0, "images/000002.png"), ("pear", 0, "images/pear-0.png"),
        ("pear", 1, "images/pear-1.png"), ("000004", 0, "images/000004.png")]
    assert entries[1]["seed"] == 7 and entries[3]["seed"] == entries[2]["seed"] + 1
    assert all(e["seconds"] > 0 and e["worker"] and e["error"] is None for e in entries)
    # each PNG carries the request that replays it, seeds fixed by the plan
    record = read_png(out / "images" / "000002.png")
    assert record.request.seed == 7 and record.request.cfg_scale == 5.0 and record.request.prompt == "green apple"
    assert json.loads(entries[1]["request"])["seed"] == 7
    before = {p.name: pixels(p) for p in (out / "images").iterdir()}
    # run again: nothing to do
    assert main(["batch", str(jobs), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 4
    # a lost image: only its row runs again, to the same pixels
    (out / "images" / "pear-1.png").unlink()
    assert main(["batch", str(jobs), "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["made"], again["images"], again["skipped"]) == (1, 2, 3)
    assert np.array_equal(pixels(out / "images" / "pear-1.png"), before["pear-1.png"])
    assert len(manifest(out)) == 5
    # another jobs file into the same folder is refused, not mixed in
    other = write_jsonl(tmp_path / "other.jsonl", ROWS[:1])
    assert main(["batch", str(other), "--out", str(out)]) == 2
    assert "holds the plan of another jobs file" in capsys.readouterr().err


def test_a_failing_row_is_recorded_and_retried_and_costs_no_other_row(tmp_path, capsys):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a", "steps": 2},
                                                 {"prompt": "b", "steps": 2, "model": str(tmp_path / "none")}])
    out = tmp_path / "run"
    assert main(["batch", str(jobs), "--out", str(out), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed"] == 1 and "1 rows failed" in captured.err
    entries = manifest(out)
    assert entries[0]["path"] == "images/000001.png" and entries[0]["error"] is None
    assert entries[1]["path"] is None and "none" in entries[1]["error"]
    assert main(["batch", str(jobs), "--out", str(out), "--json"]) == 1  # the failed row is retried, not skipped
    assert json.loads(capsys.readouterr().out)["skipped"] == 1


def test_a_killed_run_resumes_without_losing_or_doubling_rows(tmp_path):
    rows = [{"prompt": f"apple {i}", "steps": 2, "width": 32 + 8 * (i % 2)} for i in range(12)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "sfumato.cli", "batch", str(jobs), "--out", str(out), "--batch-size", "1",
               "--seed", "5"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and len(list(plans.read_journal(out))) < 3:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    made_before = {e["row"] for e in plans.read_journal(out)}
    assert 3 <= len(made_before) < 12
    done = subprocess.run(command + ["--json"], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["skipped"] >= len(made_before) - 1 and report["skipped"] + report["made"] == 12
    entries = manifest(out)
    assert [e["row"] for e in entries] == [f"{i:06d}" for i in range(1, 13)]
    assert all((out / e["path"]).is_file() for e in entries)


def test_ray_data_gives_the_same_images_and_manifest(tmp_path, ray_local):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", ROWS)
    here = run_batch(jobs, tmp_path / "here", seed=3)
    # one actor with this process's threads (2, or 1 under xdist): the same arithmetic, bit for bit
    import torch

    threads = torch.get_num_threads()
    ray1 = run_batch(jobs, tmp_path / "ray1", seed=3, ray="local", replicas=1, cpus_per_replica=threads)
    # two single-thread actors: other float summation order, so equal up to one level of 255
    ray2 = run_batch(jobs, tmp_path / "ray2", seed=3, ray="local", replicas=2, cpus_per_replica=1, batch_size=2)
    assert here.images == ray1.images == ray2.images == 5
    # ids that look like numbers stay the plan's strings on Ray (no type guessing on the way)
    numeric = run_batch(write_jsonl(tmp_path / "two.jsonl", ROWS[:2]), tmp_path / "ray3", seed=3, ray="local")
    assert numeric.made == 2 and [e["row"] for e in manifest(tmp_path / "ray3")] == ["000001", "000002"]
    again = run_batch(tmp_path / "jobs.jsonl", tmp_path / "ray2", ray="local", replicas=2)  # resumes: nothing left
    assert (again.skipped, again.made) == (4, 0) and len(manifest(tmp_path / "ray2")) == 5
    columns = ("row", "image", "of", "path", "seed", "subseed", "request")
    expected = [{c: e[c] for c in columns} for e in manifest(tmp_path / "here")]
    for name, tolerance in (("ray1", 0), ("ray2", 1)):
        entries = manifest(tmp_path / name)
        assert [{c: e[c] for c in columns} for e in entries] == expected
        assert all(e["worker"] != manifest(tmp_path / "here")[0]["worker"] for e in entries)
        for e in entries:
            diff = np.abs(pixels(tmp_path / name / e["path"]) - pixels(tmp_path / "here" / e["path"]))
            assert diff.max() <= tolerance, (name, e["path"], diff.max())


def test_eval_takes_a_manifest_and_gives_the_same_numbers_on_ray(tmp_path, capsys, ray_local):
    from sfumato.models.tiny import build_tiny_clip

    fruits = ["red apple", "green apple", "pear", "banana", "cherries", "grapes", "lemon", "peach"]
    fake = run_batch(write_jsonl(tmp_path / "fake.jsonl", [{"prompt": p, "steps": 2} for p in fruits * 3]),
                     tmp_path / "fake", seed=1, batch_size=8).manifest
    run_batch(write_jsonl(tmp_path / "real.jsonl", [{"prompt": p, "steps": 4} for p in fruits * 3]),
              tmp_path / "real", seed=2, batch_size=8)
    clip = build_tiny_clip(tmp_path / "clip")
    # FID (image features) and CLIP score (image + caption features) cover both feature paths on Ray; KID shares
    # FID's features and is tested locally (test_evaluation)
    for metric, extra in (("fid", ["--real", str(tmp_path / "real" / "images")]),
                          ("clip-score", ["--clip-model", str(clip)])):
        numbers = []
        for ray in ([], ["--ray", "--replicas", "2"]):
            # the manifest (folder or file) is the image set; its prompts are the captions
            source = str(fake.parent) if not ray else str(fake)
            assert main(["eval", metric, "--fake", source, *extra, "--json", *ray]) == 0
            record = json.loads(capsys.readouterr().out)
            assert record["fake_images"] == 24
            numbers.append(record["value"])
        assert numbers[0] == numbers[1], (metric, numbers)
        assert numbers[0] != 0


def test_planning_resuming_and_the_manifest_keep_memory_flat_in_the_number_of_rows(tmp_path):
    """Rows are streamed: ten times the rows (each with a 2 KB request) must not cost ten times the memory."""
    import tracemalloc

    from sfumato.scale.batch import write_manifest

    peaks = {}
    plans.make_plan(write_jsonl(tmp_path / "warm.jsonl", ROWS), tmp_path / "warm")  # imports, caches
    for rows in (500, 5000):
        out = tmp_path / f"run{rows}"
        jobs = write_jsonl(tmp_path / f"jobs{rows}.jsonl", [{"prompt": f"prompt {i} " + "x" * 300}
                                                             for i in range(rows)])
        tracemalloc.start()
        plans.make_plan(jobs, out, seed=1)
        with open(out / "manifest.jsonl", "w") as journal:  # what a finished run leaves
            for line in open(out / "plan.jsonl"):
                entry = json.loads(line)
                journal.write(json.dumps({"row": entry["row"], "image": 0, "of": 1, "path": None, "blocked": "x",
                                          "request": entry["request"]}) + "\n")
        assert len(plans.done_rows(out)) == rows and plans.write_pending(out, set()) == (rows, rows)
        assert pq.read_metadata(write_manifest(out, chunk=1000)).num_rows == rows
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # the journal alone is 5000 x ~2.4 KB = 12 MB; an index of it (row ids, offsets) is what may grow
    assert peaks[5000] < peaks[500] + 4 * 2**20, peaks
