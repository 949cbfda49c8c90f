"""The web UI in real Chromium (Debian's /usr/bin/chromium via Playwright) against a live server on loopback.

Screenshots go to test-artifacts/ui/ (or $SFUMATO_UI_ARTIFACTS).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
ARTIFACTS = Path(os.environ.get("SFUMATO_UI_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts" / "ui"))
SERVER_DATA: dict[str, Path] = {}  # the live server's data folder (job records name files, never paths)


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    from test_server import _free_port, _serve

    from sfumato.models.tiny import build_tiny

    model = models_dir / "sd1-ui"
    if not model.exists():
        build_tiny("sd1", model)
    port = _free_port()
    home = tmp_path_factory.mktemp("ui-home")
    build_tiny("sd1", home / "models" / "checkpoints" / "other", seed=1)  # for the Merge tab
    build_tiny("z-image", home / "models" / "checkpoints" / "zimg")  # the new families (tests/test_families.py)
    build_tiny("wan", home / "models" / "checkpoints" / "wan")
    build_tiny("flux-kontext", home / "models" / "checkpoints" / "kontext")
    import shutil

    shutil.copytree(model / "vae", home / "models" / "vae" / "tinyvae")  # for the VAE picker
    (home / "styles.csv").write_text('name,prompt,negative_prompt\nsharp,"highly detailed",blurry\n'
                                     'cinematic,"cinematic still of {prompt}",cartoon\n')
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SFUMATO_HOME", str(home))
        SERVER_DATA["dir"] = tmp_path_factory.mktemp("ui-server")
        process = _serve(model, SERVER_DATA["dir"], port, "--max-batch-size", "1")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(40)  # a step in progress ends first (the worker stops between steps)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    yield page
    context.close()


def _shot(page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def _generate_and_get_job(page, server: str) -> dict:
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=60_000)
    return httpx.get(server + "/api/v1/jobs?limit=1").json()["jobs"][0]


def _small(page, steps: int = 2) -> None:
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", str(steps))


def test_generate_and_see_it_in_the_gallery(page, server):
    page.fill("#prompt", "red apple, (shiny:1.2) --no leaves")
    assert page.inner_text("#prompt-flags") == "flags: --no"
    page.wait_for_function("document.getElementById('prompt-tokens').textContent === '4/75 tokens'")  # model tokenizer
    assert page.locator("#prompt-highlight .em").inner_text() == "(shiny:1.2)"
    _small(page)
    page.fill("#seed", "42")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#results img", timeout=60_000)
    assert page.inner_text("#progress-text").startswith("done")
    _shot(page, "generate")
    page.click("#tab-gallery")
    page.wait_for_selector("#gallery img", timeout=30_000)
    assert "seed 42" in page.get_attribute("#gallery img", "alt")
    page.click("#gallery .actions button:has-text('Info')")
    assert page.inner_text("#details").startswith("red apple, (shiny:1.2)\nNegative prompt: leaves")
    _shot(page, "gallery")


def test_inpaint_with_a_drawn_mask(page, server, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(init)
    page.click("#tab-edit")
    page.set_input_files("#init-file", str(init))
    page.wait_for_function("document.getElementById('use-init').checked")
    box = page.locator("#mask-canvas").bounding_box()
    def stroke(fraction_x: float) -> None:  # a vertical brush stroke at this fraction of the width
        page.mouse.move(box["x"] + box["width"] * fraction_x, box["y"] + 4)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * fraction_x, box["y"] + box["height"] - 4, steps=12)
        page.mouse.up()

    stroke(0.5)
    page.click("#mask-undo")  # undo removes the middle stroke
    stroke(0.1)
    _shot(page, "edit")
    page.fill("#prompt", "blue sky")
    page.fill("#steps", "3")
    job = _generate_and_get_job(page, server)
    assert job["status"] == "completed" and job["request"]["mask"] and job["request"]["init_image"]
    assert "/" not in job["request"]["mask"]  # a name over the network, not the server's path
    mask = Image.open(SERVER_DATA["dir"] / "uploads" / job["request"]["mask"]).convert("L")
    assert mask.getpixel((6, 32)) == 255 and mask.getpixel((32, 32)) == 0 and mask.getpixel((60, 32)) == 0


def test_cancel_a_queued_job_from_the_queue_view(page, server):
    slow = httpx.post(server + "/api/v1/jobs", json={"prompt": "slow", "width": 256, "height": 256,
                                                      "steps": 150}).json()["id"]
    queued = httpx.post(server + "/api/v1/jobs", json={"prompt": "waiting", "width": 64, "height": 64,
                                                        "steps": 2}).json()["id"]
    page.click("#tab-queue")
    page.wait_for_selector(f"tr[data-job='{queued}'] button", timeout=10_000)
    _shot(page, "queue")
    page.click(f"tr[data-job='{queued}'] button")
    deadline = time.time() + 10
    while httpx.get(f"{server}/api/v1/jobs/{queued}").json()["status"] != "cancelled":
        assert time.time() < deadline
        time.sleep(0.1)
    httpx.delete(f"{server}/api/v1/jobs/{slow}")


def test_drop_a_png_to_read_its_parameters(page, server):
    body = {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "seed": 1234, "steps": 2, "width": 64,
            "height": 64, "sampler": "DDIM"}
    done = httpx.post(server + "/sdapi/v1/txt2img", json={**body, "sampler_name": "DDIM"}, timeout=60).json()
    png = done["images"][0]
    page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'old.png', {type: 'image/png'}));
        document.getElementById('prompt').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
    }""", png)
    page.wait_for_function("document.getElementById('prompt').value === 'a lighthouse at dusk'")
    assert page.input_value("#negative_prompt") == "fog" and page.input_value("#seed") == "1234"
    assert page.input_value("#sampler") == "DDIM" and page.input_value("#steps") == "2"


def test_phone_width_layout_and_errors(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    form, result = page.locator("#generate-form").bounding_box(), page.locator("#view-result").bounding_box()
    assert result["y"] >= form["y"] + form["height"] - 1  # stacked, not side by side
    page.fill("#prompt", "x")
    page.fill("#steps", "1000")
    page.evaluate("document.getElementById('steps').removeAttribute('max')")
    page.click("#generate")
    page.wait_for_selector("#message:not([hidden])")
    assert page.inner_text("#message").startswith("Invalid request: ")
    _shot(page, "phone")
    page.click("#tab-settings")
    page.select_option("#theme", "dark")
    page.click("#save-settings")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    _shot(page, "phone-dark-settings")
    context.close()



def test_styles_picker_and_prompt_language(page, server):
    """Styles from the server's styles.csv go into the request; editing, AND and wildcards are highlighted and the
    counter reports the longest of the scheduled prompts."""
    assert page.eval_on_selector_all("#styles option", "o => o.map(x => x.value)") == ["sharp", "cinematic"]
    page.fill("#prompt", "a [cat:big red dog:0.5] AND a {red|blue} bird")
    assert page.locator("#prompt-highlight .sched").inner_text() == "[cat:big red dog:0.5]"
    assert page.locator("#prompt-highlight .and").inner_text() == "AND"
    assert page.locator("#prompt-highlight .dyn").inner_text() == "{red|blue}"
    page.wait_for_function("document.getElementById('prompt-tokens').textContent.includes('scheduled prompts')")
    assert page.inner_text("#prompt-tokens") == "7/75 tokens (longest of 3 scheduled prompts)"
    page.select_option("#styles", ["sharp"])
    _small(page, steps=1)
    page.fill("#seed", "5")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#results img", timeout=60_000)
    job = httpx.get(server + "/api/v1/jobs?limit=1").json()["jobs"][0]
    assert job["request"]["styles"] == ["sharp"] and job["request"]["negative_prompt"] == "blurry"
    assert job["request"]["template"] == "a [cat:big red dog:0.5] AND a {red|blue} bird"
    assert job["request"]["image_prompts"][0].endswith("bird, highly detailed")


@pytest.fixture(scope="module")
def emoji_server(tmp_path_factory):
    """A live server on sfumato-emoji (with its shipped ControlNet; named, not the default)."""
    from test_server import _free_port, _serve

    from sfumato.control.models import embedded_controlnet
    from sfumato.models.embedded import embedded_model

    if embedded_model("sfumato-emoji") is None or embedded_controlnet("sfumato-emoji") is None:
        pytest.skip("sfumato-emoji or its ControlNet is not in this checkout")
    port = _free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SFUMATO_HOME", str(tmp_path_factory.mktemp("ui-emoji-home")))
        SERVER_DATA["emoji"] = tmp_path_factory.mktemp("ui-emoji")
        process = _serve(embedded_model("sfumato-emoji"), SERVER_DATA["emoji"], port, "--max-batch-size", "1")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


def test_draw_an_outline_and_get_an_emoji_that_follows_it(browser, emoji_server):
    """The Control tab: draw a circle, preview its map, generate; the job carries the unit with the shipped model."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(emoji_server + "/")
    page.wait_for_function("document.querySelectorAll('#control-module option').length > 5")
    page.click("#tab-control")
    box = page.locator("#control-canvas").bounding_box()
    cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] * 0.35
    import math

    page.mouse.move(cx + r, cy)
    page.mouse.down()
    for k in range(1, 41):
        page.mouse.move(cx + r * math.cos(k * math.pi / 20), cy + r * math.sin(k * math.pi / 20))
    page.mouse.up()
    assert page.is_checked("#use-control")  # drawing turns the unit on
    page.select_option("#control-module", "scribble")
    page.click("#control-preview")
    page.wait_for_selector("#control-map:not([hidden])")
    _shot(page, "control")
    page.fill("#prompt", "red apple")
    page.fill("#seed", "11")
    job = _generate_and_get_job(page, emoji_server)
    assert job["status"] == "completed", job
    unit = job["request"]["controls"][0]
    assert unit["module"] == "scribble" and unit["model"] == "sfumato-emoji-canny"
    drawn = Image.open(SERVER_DATA["emoji"] / "uploads" / unit["image"]).convert("L").resize((32, 32))
    assert drawn.getpixel((16, 16)) == 255 and min(drawn.getpixel((x, 16)) for x in range(24, 32)) < 128  # a ring
    assert "ControlNet 0" in job["result"]["infotexts"][0]
    context.close()


def test_extras_tab_upscales_and_colorizes_with_a_before_after_slider(browser, emoji_server, tmp_path):
    """The Extras tab: upscale a picture with the built-in Real-ESRGAN, then colourise it with the embedded model."""
    from test_upscale import drawing

    drawing(32, 24).save(tmp_path / "in.png")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(emoji_server + "/")
    page.wait_for_function("document.querySelectorAll('#extras-upscaler option').length > 5")
    assert "R-ESRGAN 4x+" in page.eval_on_selector_all("#hires_upscaler option", "els => els.map(e => e.value)")
    page.click("#tab-extras")
    page.set_input_files("#extras-file", str(tmp_path / "in.png"))
    page.select_option("#extras-upscaler", "R-ESRGAN AnimeVideo")
    page.fill("#extras-scale", "2")
    page.click("#extras-run")
    page.wait_for_selector("#extras-compare:not([hidden])", timeout=60_000)
    page.wait_for_function("document.getElementById('extras-after').naturalWidth === 64")
    assert page.inner_text("#extras-info").startswith("64x48 with R-ESRGAN AnimeVideo")
    page.fill("#extras-slider", "20")
    assert "20%" in page.eval_on_selector("#extras-after-clip", "e => e.style.clipPath")
    page.select_option("#extras-op", "colorize")
    page.fill("#extras-prompt", "red apple")
    page.click("#extras-run")
    page.wait_for_function("document.getElementById('extras-info').textContent.includes('Colorize: True')",
                           timeout=60_000)
    assert "shown enlarged" in page.inner_text("#extras-info")  # a 32 px model's result says so
    _shot(page, "extras")
    context.close()


def test_vae_picker_and_merge_tab(page, server):
    """Pick a VAE from the models home (recorded in the infotext), then merge two checkpoints in the Merge tab and
    generate with the result, which the model list shows at once."""
    page.wait_for_function("document.querySelectorAll('#vae option').length === 2")
    _small(page)
    page.fill("#prompt", "a red apple")
    page.select_option("#vae", "tinyvae")
    page.select_option("#cache_interval", "2")
    page.select_option("#token_merging_ratio", "0.3")
    page.check("#fast")
    page.fill("#steps", "")  # Fast fills the steps left open (2)
    job = _generate_and_get_job(page, server)
    assert job["status"] == "completed" and job["request"]["vae"].endswith("tinyvae"), job
    assert "VAE: tinyvae" in job["result"]["infotexts"][0]
    assert job["request"]["cache_interval"] == 2 and "Step cache: interval 2" in job["result"]["infotexts"][0]
    assert job["request"]["token_merging_ratio"] == 0.3
    assert (job["request"]["preset"], job["request"]["steps"]) == ("lcm", 2) and "Sampler: LCM" in \
        job["result"]["infotexts"][0]
    page.uncheck("#fast")
    page.fill("#steps", "2")
    page.select_option("#cache_interval", "1")
    page.select_option("#token_merging_ratio", "0")
    page.click("#tab-merge")
    page.select_option("#merge-a", "sd1-ui")
    page.select_option("#merge-b", "other")
    page.fill("#merge-alpha", "0.3")
    page.select_option("#merge-preset", "GRAD_V")
    page.fill("#merge-name", "mix")
    page.click("#merge-run")
    page.wait_for_function("document.getElementById('merge-info').textContent.startsWith('saved mix')", timeout=60_000)
    _shot(page, "merge")
    assert page.input_value("#model") == "mix" and page.input_value("#merge-b") == "other"  # choices kept
    page.select_option("#vae", "")
    page.click("#generate")
    for _ in range(600):
        job = httpx.get(server + "/api/v1/jobs?limit=1").json()["jobs"][0]
        if Path(job["request"]["model"]).name == "mix" and job["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert job["status"] == "completed" and Path(job["request"]["model"]).name == "mix", job
    page.click("#tab-merge")
    page.click("#merge-run")  # the same name again: refused, nothing overwritten
    page.wait_for_selector("#message:not([hidden])")
    assert "exists already" in page.inner_text("#message")


def test_animate_tab_makes_a_prompt_travel_gif_and_mp4(page, server):
    _small(page)
    page.fill("#prompt", "a red apple")
    page.click("#tab-animate")
    page.fill("#anim-keyframes", '0: "a red apple", 2: "a green apple"')
    page.fill("#anim-frames", "3")
    page.click("#anim-run")
    page.wait_for_selector("#anim-result:not([hidden])", timeout=60_000)
    assert "temporal SSIM" in page.inner_text("#anim-metrics") and "flicker" in page.inner_text("#anim-metrics")
    assert page.inner_text("#anim-progress").startswith("3 frames")
    assert page.eval_on_selector("#anim-result", "img => img.naturalWidth") == 64
    assert not page.is_hidden("#anim-video-out") and not page.is_hidden("#anim-mp4")
    job = httpx.get(server + "/api/v1/jobs?limit=1").json()["jobs"][0]
    assert job["request"]["animation"]["prompts"] == {"0": "a red apple", "2": "a green apple"}
    _shot(page, "animate")
    page.click("#tab-gallery")  # one gallery entry for the animation: its first frame, captioned
    page.wait_for_selector("#gallery figcaption", timeout=30_000)
    card = page.locator("#gallery figure", has=page.locator("figcaption"))
    assert card.count() == 1 and "travel" in card.inner_text() and "3 frames" in card.inner_text()
    page.fill("#prompt", "")
    card.locator("button:has-text('Reuse')").click()
    assert page.input_value("#prompt") == "a red apple"  # the request's prompt, not a label
    page.click("#tab-animate")
    page.fill("#anim-keyframes", '0: "open')  # a bad keyframe: one clear message, no job
    page.click("#anim-run")
    page.wait_for_selector("#message:not([hidden])")
    assert "unterminated" in page.inner_text("#message")


def test_a_new_family_generates_and_a_video_model_animates_from_the_ui(page, server):
    """The model list names each model's family; a Z-Image model generates from the Generate form (its sampler left
    to the model) and a Wan model makes a clip in the Animate tab's video-model mode (17 frames offered, 5 asked)."""
    labels = page.eval_on_selector_all("#model option", "options => options.map((o) => o.textContent)")
    assert "zimg (z-image)" in labels and "wan (wan)" in labels
    page.select_option("#model", "zimg")  # its samplers only (Z-Image's pipeline takes Euler alone)
    assert page.eval_on_selector_all("#sampler option", "o => o.map((x) => x.value)") == ["", "Euler"]
    page.fill("#prompt", "a red apple")
    page.fill("#width", "32")
    page.fill("#height", "32")
    page.fill("#steps", "2")
    job = _generate_and_get_job(page, server)
    assert job["status"] == "completed" and Path(job["request"]["model"]).name == "zimg", job
    page.select_option("#model", "wan")
    page.click("#tab-animate")
    page.select_option("#anim-mode", "video-model")
    assert page.input_value("#anim-frames") == "17"
    page.fill("#anim-frames", "5")
    page.click("#anim-run")
    page.wait_for_selector("#anim-result:not([hidden])", timeout=60_000)
    assert page.inner_text("#anim-progress").startswith("5 frames")
    job = httpx.get(server + "/api/v1/jobs?limit=1").json()["jobs"][0]
    assert job["request"]["animation"]["mode"] == "video-model" and len(job["images"]) == 5
    page.select_option("#model", "sd1-ui")
    assert page.locator("#sampler option").count() == 24  # "model default" and every A1111 sampler again


def test_a_kontext_model_edits_the_edit_tabs_image_by_instruction(page, server, tmp_path):
    """With a FLUX.1 Kontext model selected, the Edit tab's image (no mask drawn) is the reference the prompt
    edits: the job resolves it to `reference_image` and the result has the form's size."""
    init = tmp_path / "car.png"
    Image.new("RGB", (48, 48), (200, 40, 40)).save(init)
    page.select_option("#model", "kontext")
    page.click("#tab-edit")
    page.set_input_files("#init-file", str(init))
    page.wait_for_function("document.getElementById('use-init').checked")
    page.fill("#prompt", "make it blue")
    page.fill("#width", "32")
    page.fill("#height", "32")
    page.fill("#steps", "2")
    job = _generate_and_get_job(page, server)
    assert job["status"] == "completed", job
    assert job["request"]["reference_image"] and not job["request"]["init_image"], job["request"]
    assert page.eval_on_selector("#results img", "img => img.naturalWidth") == 32


def test_views_sheet_and_consistent_batch_from_the_generate_form(page, server):
    """The Views sheet choice queues one consistent job through POST /api/v1/views: three results, one per view."""
    page.fill("#prompt", "a red robot")
    _small(page)
    page.fill("#seed", "8")
    page.select_option("#views", "front,side,back")
    job = _generate_and_get_job(page, server)
    page.wait_for_function("document.querySelectorAll('#results img').length === 3")
    assert job["request"]["consistent"] == 1.0
    assert job["request"]["image_prompts"] == [f"a red robot, {v} view" for v in ("front", "side", "back")]
    page.select_option("#views", "")
    page.select_option("#consistent", "2")
    page.fill("#batch_size", "2")
    job = _generate_and_get_job(page, server)
    assert job["request"]["consistent"] == 2.0 and job["request"]["batch_size"] == 2


def test_comfyui_front_end_loads_a_workflow_queues_it_and_shows_the_image(browser, tmp_path):
    """`sfumato serve --comfy-frontend` with ComfyUI's own web app (comfyui-frontend-package, test extras only): it
    starts, loads an official template (its own default workflow is Z-Image, a family sfumato lacks), queues it
    through /comfy/api/prompt and fetches the result through /comfy/api/view to draw it in the Save Image node."""
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    pytest.importorskip("comfyui_frontend_package")
    from test_server import _free_port, _serve

    from sfumato.models.embedded import embedded_model

    if embedded_model() is None:
        pytest.skip("the embedded model is not installed")
    port = _free_port()
    process = _serve(embedded_model(), tmp_path / "data", port, "--comfy-frontend")
    try:
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        page = context.new_page()
        views = []
        page.on("response", lambda r: views.append(r.status) if "/comfy/api/view?" in r.url else None)
        page.goto(f"http://127.0.0.1:{port}/comfy/")
        page.wait_for_function("window.app && window.app.graph && window.app.graph._nodes.length > 0", timeout=60_000)
        template = (Path(templates.__file__).parent / "templates" / "image_sdxl_simple.json").read_text()
        page.evaluate("async (w) => { await window.app.loadGraphData(JSON.parse(w)); }", template)
        page.evaluate("""() => { for (const n of window.app.graph._nodes) for (const w of (n.widgets || [])) {
            if (w.name === 'ckpt_name') w.value = 'sfumato-emoji';
            if (w.name === 'width' || w.name === 'height') w.value = 32;
            if (w.name === 'steps') w.value = 4; } }""")
        page.evaluate("window.app.queuePrompt(0, 1)")
        page.wait_for_function("Object.values(window.app.nodeOutputs || {}).some(o => o.images && o.images.length)",
                               timeout=120_000)
        page.evaluate("""() => { const save = window.app.graph._nodes.find(n => n.type === 'SaveImage');
            window.app.canvas.ds.scale = 2.5; window.app.canvas.centerOnNode(save);
            window.app.graph.setDirtyCanvas(true, true); }""")
        page.wait_for_function("true", timeout=1000)
        deadline = time.time() + 30
        while not views and time.time() < deadline:
            page.wait_for_timeout(200)
        assert views and views[0] == 200
        _shot(page, "comfyui-frontend")
        context.close()
    finally:
        process.terminate()
        process.wait(40)


def _in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + min(box["height"], 40) <= size["height"] \
        and box["x"] >= 0 and box["x"] < size["width"]


@pytest.mark.parametrize("viewport", [(1366, 768), (390, 844)], ids=["laptop", "phone"])
def test_feedback_stays_in_view_after_generate(browser, server, viewport):
    """A first-time user at 1366×768 or on a phone: Generate, its errors, progress and results are visible without
    scrolling; Save settings neither duplicates the lists nor loses the model and sampler chosen."""
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#sampler option').length > 5")
    assert _in_view(page, "#generate")  # the action bar sticks to the bottom of the form
    page.fill("#prompt", "red apple")
    page.fill("#width", "4096")  # over the server's limit: refused
    page.fill("#height", "64")
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_function("document.getElementById('generate-status').textContent.includes('4096')")
    assert _in_view(page, "#generate-status") and _in_view(page, "#message")
    page.fill("#width", "64")
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=60_000)
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('done')")
    assert _in_view(page, "#results img") and _in_view(page, "#progress-text")
    _shot(page, f"flow-{'laptop' if width > 900 else 'phone'}", full_page=False)  # what the user sees
    samplers = page.locator("#sampler option").count()
    page.select_option("#sampler", "Euler a")
    model = page.input_value("#model")
    page.click("#tab-settings")
    assert _in_view(page, "#save-settings")  # a tab's panel comes into view on a phone
    for _ in range(2):
        page.click("#save-settings")
        page.wait_for_timeout(300)
    assert page.locator("#sampler option").count() == samplers
    assert page.input_value("#sampler") == "Euler a" and page.input_value("#model") == model
    context.close()


def test_sizes_are_offered_around_the_model_native_size(browser, emoji_server):
    """The embedded 32 px model is offered 32/48/64, not 512-1024, and a size above twice its side is flagged."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.goto(emoji_server + "/")
    page.wait_for_function("document.querySelectorAll('#size-preset option').length > 1 && "
                           "document.getElementById('size-preset').options[0].textContent.includes('32')")
    options = page.eval_on_selector_all("#size-preset option", "os => os.map(o => o.value)")
    assert options == ["", "32x32", "48x48", "64x64"]
    assert page.is_hidden("#size-hint")
    page.fill("#width", "512")
    page.fill("#height", "512")
    assert page.is_visible("#size-hint") and "native 32 px" in page.inner_text("#size-hint")
    page.select_option("#size-preset", "64x64")
    assert page.is_hidden("#size-hint") and page.input_value("#width") == "64"
    context.close()


def test_result_actions_upscale_control_inpaint_without_touching_the_form(page, server):
    """A result goes onward without a download: Upscale (Extras), Use as control (Control), Inpaint (Edit, with its
    own button); none changes the form's size silently. The gallery pages."""
    page.fill("#prompt", "a red apple")
    _small(page)
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=60_000)
    size = (page.input_value("#width"), page.input_value("#height"))
    card = page.locator("#results figure").first
    card.locator("button:has-text('Use as control')").click()
    assert not page.is_hidden("#view-control") and page.is_checked("#use-control")
    page.click("#tab-result")
    card.locator("button:has-text('Inpaint')").click()
    assert not page.is_hidden("#view-edit") and page.is_checked("#use-init") and page.is_visible("#edit-generate")
    assert (page.input_value("#width"), page.input_value("#height")) == size
    assert "64×64" in page.inner_text("#edit-size-note")
    page.uncheck("#use-init")
    page.click("#tab-result")
    card.locator("button:has-text('Upscale')").click()
    assert not page.is_hidden("#view-extras") and "from the results" in page.inner_text("#extras-source")
    page.select_option("#extras-upscaler", "Lanczos")
    page.fill("#extras-scale", "2")
    page.click("#extras-run")
    page.wait_for_selector("#extras-compare:not([hidden])", timeout=60_000)
    assert "128x128" in page.inner_text("#extras-info")
    done = [j for j in httpx.get(server + "/api/v1/jobs?limit=500").json()["jobs"] if j["status"] == "completed"]
    ids = [httpx.post(server + "/api/v1/jobs", json={"prompt": f"filler {k}", "steps": 1, "width": 32, "height": 32,
                                                      "seed": k}).json()["id"] for k in range(max(0, 26 - len(done)))]
    for job_id in ids:  # more than a page of finished jobs
        while httpx.get(f"{server}/api/v1/jobs/{job_id}").json()["status"] != "completed":
            time.sleep(0.05)
    page.click("#tab-gallery")
    page.wait_for_selector("#gallery-more:not([hidden])", timeout=30_000)
    first = page.locator("#gallery figure").count()
    page.click("#gallery-more")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length > {first}")
