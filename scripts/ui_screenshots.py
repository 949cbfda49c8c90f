"""Screenshots of the web UI's main screens for docs/, served with the embedded model.

    python scripts/ui_screenshots.py [--out docs]

Starts `sfumato serve` on a free loopback port, drives Debian's Chromium with Playwright (headless),
generates a few emoji, and saves docs/ui-generate.png, ui-edit.png, ui-gallery.png, ui-phone.png and
ui-prompt-language.png, ui-control.png, ui-extras.png and ui-animate.png (a style, prompt editing, AND and a wildcard; the home holds an example styles.csv).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--only", choices=["control", "extras", "animate"], help="make only this screenshot")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp(prefix="sfumato-ui-")
    home = Path(data) / "home"
    (home / "wildcards").mkdir(parents=True)
    (home / "styles.csv").write_text('name,prompt,negative_prompt\nclean,"{prompt}","blurry, dark"\nsketch,"{prompt}, pencil sketch",\n')
    (home / "wildcards" / "fruit.txt").write_text("banana\ngrapes\npear\ncherries\n")
    server = subprocess.Popen([sys.executable, "-m", "sfumato.cli", "serve", "--port", str(port), "--data-dir", data],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "SFUMATO_HOME": str(home)})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        for seed, prompt in enumerate(["red apple", "rocket", "grinning face", "pizza", "ghost", "rainbow"]):
            if args.only:
                break
            httpx.post(base + "/sdapi/v1/txt2img", json={"prompt": prompt, "seed": seed}, timeout=120)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            if args.only in (None, "control"):
                control_shot(browser, base, args.out)
            if args.only in (None, "extras"):
                extras_shot(browser, base, args.out)
            if args.only in (None, "animate"):
                animate_shot(browser, base, args.out)
            if args.only:
                browser.close()
                return
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(base + "/")
            page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
            page.fill("#prompt", "red apple, (shiny:1.2) --no leaves")
            page.fill("#seed", "7")
            page.fill("#batch_size", "4")
            page.click("#generate")
            page.wait_for_selector("#results img", timeout=120_000)
            page.screenshot(path=str(args.out / "ui-generate.png"))
            page.click("#results .actions button:has-text('Send to edit')")
            box = page.locator("#mask-canvas").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=10)
            page.mouse.up()
            page.screenshot(path=str(args.out / "ui-edit.png"))
            page.click("#tab-gallery")
            page.wait_for_selector("#gallery img")
            time.sleep(1)
            page.screenshot(path=str(args.out / "ui-gallery.png"))
            page = browser.new_page(viewport={"width": 1280, "height": 860})  # the edit tab left an init image
            page.goto(base + "/")
            page.wait_for_function("document.querySelectorAll('#styles option').length > 1")
            page.fill("#prompt", "__fruit__ AND red heart :0.15")  # the style adds a negative prompt
            page.fill("#batch_size", "4")
            page.wait_for_function("document.getElementById('prompt-tokens').textContent.includes('scheduled')")
            page.select_option("#styles", ["clean"])
            page.fill("#seed", "3")
            page.click("#generate")
            page.wait_for_function("document.querySelectorAll('#results img').length === 4 && "
                                   "document.getElementById('progress-text').textContent.startsWith('done')",
                                   timeout=120_000)
            page.screenshot(path=str(args.out / "ui-prompt-language.png"))
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(base + "/")
            phone.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
            phone.screenshot(path=str(args.out / "ui-phone.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"screenshots in {args.out}")


def control_shot(browser, base: str, out: Path) -> None:
    """The Control tab: a hand-drawn star, its scribble map, and four emoji that follow it."""
    import math

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#control-module option').length > 5")
    page.click("#tab-control")
    box = page.locator("#control-canvas").bounding_box()
    cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] * 0.38
    points = [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
               cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(11)]
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=6)
    page.mouse.up()
    page.select_option("#control-module", "scribble")
    page.click("#control-preview")
    page.wait_for_selector("#control-map:not([hidden])")
    page.fill("#prompt", "sun")
    page.fill("#seed", "3")
    page.fill("#batch_size", "4")
    page.screenshot(path=str(out / "ui-control.png"))
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#results img').length === 4 && "
                           "document.getElementById('progress-text').textContent.startsWith('done')", timeout=120_000)
    page.screenshot(path=str(out / "ui-control-result.png"))
    page.close()


def extras_shot(browser, base: str, out: Path) -> None:
    """The Extras tab: a generated 32x32 emoji upscaled 4x with the built-in Real-ESRGAN, before/after at 50%."""
    source = Path(tempfile.mkdtemp()) / "emoji.png"
    reply = httpx.post(base + "/sdapi/v1/txt2img", json={"prompt": "grinning face", "seed": 5},
                       timeout=120).json()
    import base64

    source.write_bytes(base64.b64decode(reply["images"][0]))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#extras-upscaler option').length > 5")
    page.click("#tab-extras")
    page.set_input_files("#extras-file", str(source))
    page.select_option("#extras-upscaler", "R-ESRGAN 4x+")
    page.fill("#extras-scale", "4")
    page.click("#extras-run")
    page.wait_for_function("document.getElementById('extras-after').naturalWidth === 128", timeout=120_000)
    page.screenshot(path=str(out / "ui-extras.png"))
    page.close()


def animate_shot(browser, base: str, out: Path) -> None:
    """The Animate tab: prompt travel red apple -> green apple -> pear, 17 frames, GIF and MP4 with their metrics."""
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    page.fill("#seed", "7")
    page.select_option("#sampler", "Euler")
    page.click("#tab-animate")
    page.fill("#anim-keyframes", '0: "a red apple", 8: "a green apple", 16: "a pear"')
    page.fill("#anim-frames", "17")
    page.click("#anim-run")
    page.wait_for_selector("#anim-result:not([hidden])", timeout=300_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "ui-animate.png"), full_page=True)
    page.close()


if __name__ == "__main__":
    main()
