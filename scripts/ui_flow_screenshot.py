"""The before/after pictures of docs/ui.md: a 1366x768 browser, the embedded model, a width over the server's limit,
Generate clicked where it is — what the user then sees.

    python scripts/ui_flow_screenshot.py OUT.png [--code DIR]   # DIR: a checkout to serve from (e.g. a worktree of
                                                               # an older commit, for the "before")
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--chromium", default=os.environ.get("SFUMATO_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from sfumato.models.embedded import embedded_model
    from test_server import _free_port

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(args.code), "OMP_NUM_THREADS": "1"}
    data = Path(os.environ.get("TMPDIR", "/tmp")) / f"sfumato-ui-shot-{port}"
    server = subprocess.Popen([sys.executable, "-m", "sfumato.cli", "serve", "--model", str(embedded_model()),
                               "--port", str(port), "--data-dir", str(data), "--safety", "off"], env=env,
                              cwd=str(args.code), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
            page.fill("#prompt", "red apple")
            page.fill("#width", "4096")
            page.fill("#height", "64")
            page.locator("#generate").scroll_into_view_if_needed()
            page.click("#generate")
            page.wait_for_timeout(2000)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
