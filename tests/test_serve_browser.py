"""``tcl serve`` as a user meets it: a real server process on a free loopback port, driven in headless Chromium
(Debian's chromium + chromium-driver through Selenium), and a bounded concurrency run against it.

Without Chromium these tests are skipped locally; under CI (``CI=true``) a missing browser is a failure, because
``.ci/run`` installs it. The screenshot goes to ``$TCL_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

import importlib.util
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tcl.data.shapes import SceneObject, render_scene
from test_serve import tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TCL_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))

spec = importlib.util.spec_from_file_location("screenshot_serve", REPO / "scripts" / "screenshot_serve.py")
screenshot_serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshot_serve)

pytestmark = pytest.mark.slow


def require_browser():
    if screenshot_serve.CHROMIUM.exists() and screenshot_serve.CHROMEDRIVER.exists():
        return
    message = (f"{screenshot_serve.CHROMIUM} or {screenshot_serve.CHROMEDRIVER} is missing "
               "(apt-get install chromium chromium-driver)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def server(shapes_root, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("served_model")
    tiny_pipeline(shapes_root).save_pretrained(model_dir)
    with screenshot_serve.running_server(model_dir, shapes_root / "images" / "val2014") as (url, process):
        yield url, process


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> Path:
    """A generated image the page has never seen: a red circle left of a blue square."""
    objects = [SceneObject("red", "circle", "large", 18.0, 30.0, 11.0),
               SceneObject("blue", "square", "small", 46.0, 34.0, 6.4)]
    path = tmp_path_factory.mktemp("upload") / "scene.png"
    render_scene(objects, 64, np.random.default_rng(0)).save(path)
    return path


def test_page_in_chromium_upload_ask_answers_and_heatmap(server, scene_png):
    require_browser()
    url, _process = server
    driver = screenshot_serve.browser()
    try:
        shown = screenshot_serve.ask(driver, url, "what color is the circle?", image=scene_png)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(ARTIFACTS / "serve_page.png"))
        api = httpx.post(f"{url}/api/vqa", data={"question": "what color is the circle?"},
                         files={"image": ("scene.png", scene_png.read_bytes(), "image/png")}).json()
    finally:
        driver.quit()
    assert shown["error"] == ""
    assert shown["answers"] == [a["answer"] for a in api["answers"]] and len(shown["answers"]) == 5
    assert shown["scores"] == [round(a["score"], 3) for a in api["answers"]]
    assert shown["bar_widths"][0] == max(shown["bar_widths"]) > 0  # bars scaled to the best answer
    assert shown["heatmap_size"] == [320, 320]
    screenshot = Image.open(ARTIFACTS / "serve_page.png")
    assert screenshot.size[0] >= 1000 and len(set(screenshot.convert("L").getdata())) > 20  # a rendered page


def test_page_in_chromium_with_an_example_and_an_error(server):
    require_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _process = server
    driver = screenshot_serve.browser()
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples img"))
        # Before an image is chosen: a placeholder, and no image element that would show a broken-image icon.
        assert not driver.find_element(By.ID, "preview").is_displayed()
        assert driver.find_element(By.ID, "preview-placeholder").is_displayed()
        shown_images = "[...document.images].filter(i => !i.hidden && i.offsetParent !== null)"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(f"return {shown_images}.every(i => i.complete)"))
        broken = driver.execute_script(f"return {shown_images}.filter(i => i.naturalWidth === 0).map(i => i.id || i.src)")
        assert broken == []
        icon = driver.execute_script("return document.querySelector('link[rel=icon]').href")
        response = httpx.get(icon)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
        assert httpx.get(f"{url}/favicon.ico").status_code == 200  # browsers that ask for it anyway: no 404
        shown = screenshot_serve.ask(driver, url, "how many shapes are there?", example=1)
        assert shown["error"] == "" and len(shown["answers"]) == 5
        assert driver.find_element(By.ID, "preview").is_displayed()
        assert not driver.find_element(By.ID, "preview-placeholder").is_displayed()
        # An over-long question is refused by the server and the page shows its message.
        driver.execute_script("document.getElementById('question').removeAttribute('maxlength')")
        box = driver.find_element(By.ID, "question")
        box.clear()
        box.send_keys("what " * 120)
        driver.find_element(By.ID, "ask").click()
        message = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").text)
        # The previous question's answers and heat map are gone: they do not answer this question.
        left = (driver.find_elements(By.CSS_SELECTOR, "#answers li"), driver.find_element(By.ID, "heatmap").is_displayed())
    finally:
        driver.quit()
    assert "the limit is 500" in message
    assert left == ([], False)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_fifty_requests_from_eight_clients_without_errors_or_memory_growth(server, scene_png):
    url, process = server
    image = scene_png.read_bytes()
    questions = ["what color is the circle?", "how many shapes are there?", "is there a blue square?",
                 "where is the square, left or right?"]
    lock, statuses = threading.Lock(), []

    def one_request(k: int) -> None:
        with httpx.Client(timeout=60) as client:
            response = client.post(f"{url}/api/vqa", data={"question": questions[k % 4], "top_k": "3"},
                                   files={"image": ("scene.png", image, "image/png")})
        with lock:
            statuses.append((response.status_code, len(response.json().get("answers", []))))

    def burst() -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one_request, range(50)))

    burst()  # warm-up: allocator pools and caches settle
    before = rss_mb(process.pid)
    burst()
    after = rss_mb(process.pid)
    assert statuses == [(200, 3)] * 100
    assert after - before < 25, f"server memory grew from {before:.0f} MB to {after:.0f} MB over 50 requests"
    # An oversized upload under load is refused without taking the server down.
    big = io.BytesIO(b"\0" * (11 * 2**20))
    assert httpx.post(f"{url}/api/vqa", data={"question": "what?"},
                      files={"image": ("big.png", big, "image/png")}).status_code == 413
    assert httpx.get(f"{url}/api/health").json()["status"] == "ok"
