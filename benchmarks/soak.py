"""Faults survived, with figures: kill -9 during writes, a disk that fills up, a damaged image, a long soak, and
training killed at random points.

    python benchmarks/soak.py [--model M] [--requests 10000] [--kills 3] [--train-kills 5] [--only NAME ...]

Every scenario runs `sfumato serve` / `sfumato train` as real subprocesses on loopback (a tiny SD1 model is built
when --model is not given) and prints its figures; the script exits 1 when any target is missed or any request saw
an unexpected error, and prints no ratio it could not measure. Targets: SQLite integrity "ok" and no accepted job lost
after every kill -9; no half-written PNG served; a full disk fails jobs with a clear error while the server keeps
serving and recovers when space returns; a damaged image answers 410, not a broken PNG; soak RSS growth <= 10 % and
open file descriptors flat from request 1,000 to the end; every killed training resumes from an intact checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from live_server import start_server

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler"}
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def serve(model: str, data_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    return start_server("--model", model, "--data-dir", str(data_dir), "--safety", "off", "--queue-size", "4096",
                        *extra)


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err or ""


def integrity(data_dir: Path) -> str:
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def whole_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def submit(base: str, prompt: str, seed: int, client: httpx.Client | None = None) -> httpx.Response:
    body = {"prompt": prompt, "seed": seed, **SMALL}
    return (client or httpx).post(base + "/api/v1/jobs", json=body, timeout=30)


def wait_all(base: str, ids: list[str], timeout: float = 600) -> dict[str, dict]:
    deadline, jobs = time.time() + timeout, {}
    with httpx.Client(timeout=10) as client:
        while time.time() < deadline:
            jobs = {i: client.get(f"{base}/api/v1/jobs/{i}").json() for i in ids}
            if all(j.get("status") in ("completed", "failed", "cancelled") for j in jobs.values()):
                break
            time.sleep(0.3)
    return jobs


# ------------------------------------------------------------------------------------------------ scenarios


def kill9(model: str, work: Path, kills: int) -> dict:
    """kill -9 while jobs are being generated and written; restart; nothing lost, nothing corrupt."""
    print(f"kill -9 during writes ({kills} kills)")
    data = work / "kill9"
    accepted: list[str] = []
    for round_ in range(kills):
        process, base = serve(model, data)
        accepted += [submit(base, f"kill round {round_} job {k}", k).json()["id"] for k in range(24)]
        time.sleep(random.Random(round_).uniform(0.5, 2.0))  # mid-batch, mid-PNG, mid-commit: wherever it lands
        process.send_signal(signal.SIGKILL)
        process.wait()
        check(integrity(data) == "ok", f"round {round_}: SQLite integrity_check after kill -9 is ok")
    process, base = serve(model, data)
    jobs = wait_all(base, accepted)
    lost = [i for i in accepted if jobs.get(i, {}).get("status") != "completed"]
    check(not lost, f"all {len(accepted)} accepted jobs completed after restarts ({len(lost)} lost or failed)")
    images = [img["id"] for j in jobs.values() for img in j.get("images", [])]
    broken = 0
    with httpx.Client(timeout=10) as client:
        for image_id in images:
            r = client.get(f"{base}/api/v1/images/{image_id}.png")
            broken += r.status_code != 200 or not r.content.endswith(b"IEND\xaeB`\x82")
    check(broken == 0, f"{len(images)} images served whole ({broken} broken)")
    leftovers = list((data / "images").glob("*.part"))
    check(not leftovers, f"no half-written files left in the store ({len(leftovers)})")
    stop(process)
    return {"kills": kills, "accepted": len(accepted), "lost": len(lost), "images": len(images), "broken": broken,
            "integrity": integrity(data)}


def disk_full(model: str, work: Path) -> dict:
    """The data dir on a small tmpfs that fills up mid-run (needs root to mount; skipped otherwise)."""
    print("disk full mid-run")
    mount = work / "smallfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        print("  skipped: mounting a small tmpfs needs root")
        return {"skipped": "needs root to mount a small tmpfs"}
    try:
        data = mount / "server"
        process, base = serve(model, data)
        filler = mount / "filler"
        free = shutil.disk_usage(mount).free
        with open(filler, "wb") as handle:  # leave room for a few images only
            handle.write(b"\0" * max(0, free - 160_000))
        statuses, ids = {}, []
        for k in range(40):
            r = submit(base, f"disk job {k}", k)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 202:
                ids.append(r.json()["id"])
        time.sleep(5)  # the worker meets the full disk
        during = {i: httpx.get(f"{base}/api/v1/jobs/{i}").json() for i in ids}
        failed = [j for j in during.values() if j["status"] == "failed"]
        clear = all("space" in (j.get("error") or "") for j in failed)
        check(bool(failed) or statuses.get(507, 0) > 0, f"the disk filled up: {len(failed)} jobs failed, "
                                                        f"{statuses.get(507, 0)} submissions got 507")
        check(clear, "failed jobs say the disk is full")
        check(httpx.get(base + "/healthz").status_code == 200 and
              httpx.get(base + "/api/v1/jobs").status_code == 200, "the server keeps serving while the disk is full")
        filler.unlink()
        late = submit(base, "after the disk was freed", 1).json()["id"]
        jobs = wait_all(base, [*ids, late], 300)
        stuck = [j for j in jobs.values() if j["status"] not in ("completed", "failed")]
        check(not stuck, f"every accepted job finished once space was freed ({len(stuck)} stuck)")
        check(jobs[late]["status"] == "completed", "a new job completes once space is freed")
        completed = [j for j in jobs.values() if j["status"] == "completed"]
        served = all(whole_png(data / "images" / f"{img['id']}.png") for j in completed for img in j["images"])
        check(served, f"{len(completed)} completed jobs have whole PNGs")
        err = stop(process)
        check("Traceback" not in err, "no traceback in the server log" + (f": {err[-1500:]}" if "Traceback" in err else ""))
        check(integrity(data) == "ok", "SQLite integrity_check after the disk filled is ok")
        return {"submitted": 40, "status_counts": statuses, "completed": len(completed), "failed": len(failed),
                "stuck": len(stuck), "integrity": integrity(data)}
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def damaged_image(model: str, work: Path) -> dict:
    print("a damaged image in the store")
    data = work / "damaged"
    process, base = serve(model, data)
    ids = [submit(base, "two images", k).json()["id"] for k in range(2)]
    jobs = wait_all(base, ids)
    first, second = (jobs[i]["images"][0]["id"] for i in ids)
    path = data / "images" / f"{first}.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    r = httpx.get(f"{base}/api/v1/images/{first}.png")
    check(r.status_code == 410 and "damaged" in r.json()["detail"], f"the truncated image answers {r.status_code}")
    check(httpx.get(f"{base}/api/v1/images/{second}.png").status_code == 200, "the other image is still served")
    check(httpx.get(base + "/healthz").status_code == 200, "the server keeps serving")
    stop(process)
    return {"damaged_status": r.status_code}


def soak(model: str, work: Path, total: int, clients: int = 8) -> dict:
    """`total` mixed requests (generation, job list, tokens, job status) from `clients` threads on loopback."""
    print(f"soak: {total} requests from {clients} clients")
    data = work / "soak"
    process, base = serve(model, data, "--max-batch-size", "8")
    server = psutil.Process(process.pid)
    counter, errors, marks = [0], [], {}
    lock = threading.Lock()

    def one(client: httpx.Client, n: int) -> None:
        kind = n % 4
        if kind == 0:
            r = client.post(base + "/sdapi/v1/txt2img", json={"prompt": f"soak {n % 50}", "seed": n, "steps": 1,
                                                              "width": 32, "height": 32}, timeout=120)
        elif kind == 1:
            r = client.get(base + "/api/v1/jobs?limit=20")
        elif kind == 2:
            r = client.post(base + "/api/v1/tokens", json={"prompt": f"a (red:1.2) apple {n}"})
        else:
            r = client.get(base + "/sdapi/v1/progress")
        if r.status_code != 200:
            errors.append(f"{r.status_code} {r.text[:200]}")

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    if counter[0] >= total:
                        return
                    counter[0] += 1
                    n = counter[0]
                    if n in (1000, total):
                        marks[n] = (server.memory_info().rss, server.num_fds())
                try:
                    one(client, n)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    started = time.time()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - started
    marks[total] = (server.memory_info().rss, server.num_fds())
    rss_growth = marks[total][0] / marks[1000][0] - 1
    fds = (marks[1000][1], marks[total][1])
    print(f"  {total} requests in {seconds:.0f} s ({total / seconds:.1f} req/s), errors {len(errors)}; RSS "
          f"{marks[1000][0] / 2**20:.0f} -> {marks[total][0] / 2**20:.0f} MiB ({rss_growth * 100:+.1f} %), "
          f"fds {fds[0]} -> {fds[1]}")
    check(not errors, f"no errors ({len(errors)}{': ' + errors[0] if errors else ''})")
    check(rss_growth <= 0.10, f"RSS growth {rss_growth * 100:+.1f} % <= 10 %")
    check(fds[1] - fds[0] <= 4, f"file descriptors flat ({fds[0]} -> {fds[1]})")
    err = stop(process)
    check("Traceback" not in err, "no traceback in the server log")
    check(integrity(data) == "ok", "SQLite integrity_check after the soak is ok")
    return {"requests": total, "seconds": round(seconds, 1), "errors": len(errors),
            "rss_mib": [round(marks[1000][0] / 2**20, 1), round(marks[total][0] / 2**20, 1)],
            "rss_growth_percent": round(rss_growth * 100, 2), "fds": list(fds)}


def train_kills(model: str, work: Path, kills: int) -> dict:
    """`sfumato train lora` killed with SIGKILL at random points, resumed each time; every checkpoint loads."""
    from PIL import Image

    from sfumato.training.checkpoints import latest_checkpoint, load_checkpoint

    print(f"training killed at random points ({kills} kills)")
    data = work / "train-data"
    data.mkdir()
    rng = random.Random(0)
    for k in range(6):
        Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))).save(data / f"{k}.png")
        (data / f"{k}.txt").write_text(f"a square of colour {k}")
    run = work / "train-run"
    steps = 60 * kills  # long enough that every kill lands inside the run (about 3 steps/s on 2 CPU cores)
    cmd = [sys.executable, "-m", "sfumato.cli", "train", "lora", "--model", model, "--data", str(data), "--output",
           str(run), "--steps", str(steps), "--batch-size", "2", "--resolution", "64", "--checkpoint-every", "2",
           "--keep-checkpoints", "2", "--log-every", "1", "--resume"]
    resumed_from = []
    for k in range(kills):
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(8.0, 16.0))  # imports take ~6 s; then anywhere in a step or a save
        check(process.poll() is None, f"kill {k}: the run was still training when killed")
        process.send_signal(signal.SIGKILL)
        process.wait()
        latest = latest_checkpoint(run)
        if latest is not None:
            try:
                load_checkpoint(latest)
                ok = True
            except Exception as exc:  # the figure we want: any corrupt checkpoint is a failure
                ok, latest = False, f"{latest}: {exc}"
            check(ok, f"kill {k}: latest checkpoint {Path(str(latest)).name} loads")
        resumed_from.append(Path(str(latest)).name if latest else None)
    reached = [int(name.split("-")[1]) for name in resumed_from if name]
    check(reached == sorted(reached) and len(set(reached)) > 1, f"each resume went further: {reached}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    check(done.returncode == 0, f"the final resumed run finished (exit {done.returncode})")
    final = json.loads(done.stdout) if done.returncode == 0 else {}
    check(final.get("steps") == steps, f"it reached step {final.get('steps')} of {steps}")
    return {"kills": kills, "latest_after_each_kill": resumed_from, "final_steps": final.get("steps")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model to serve (default: a tiny SD1 built now)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--train-kills", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=["kill9", "disk", "damaged", "soak", "train"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="sfumato-soak-"))
    os.environ["SFUMATO_HOME"] = str(work / "home")
    model = args.model
    if not model:
        from sfumato.models.tiny import build_tiny

        model = str(build_tiny("sd1", work / "tiny-sd1"))
    chosen = set(args.only or ["kill9", "disk", "damaged", "soak", "train"])
    figures = {}
    try:
        if "kill9" in chosen:
            figures["kill9"] = kill9(model, work, args.kills)
        if "disk" in chosen:
            figures["disk_full"] = disk_full(model, work)
        if "damaged" in chosen:
            figures["damaged_image"] = damaged_image(model, work)
        if "soak" in chosen:
            figures["soak"] = soak(model, work, args.requests)
        if "train" in chosen:
            figures["train_kills"] = train_kills(model, work, args.train_kills)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if FAILURES:
        print(f"FAILED: {len(FAILURES)} target(s) missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
