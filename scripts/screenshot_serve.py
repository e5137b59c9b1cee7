"""Starts ``tcl serve`` on a free local port, asks a question in headless Chromium and saves a screenshot.

    python scripts/screenshot_serve.py --model runs/demo/model --image IMG --question "what color is the cross?" \
        --out docs/images/serve_page.png

Uses Debian's ``chromium`` and ``chromium-driver`` packages through Selenium (``apt-get install chromium
chromium-driver``). ``tests/test_serve_browser.py`` drives the page with the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path(os.environ.get("TCL_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TCL_CHROMEDRIVER", "/usr/bin/chromedriver"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: str | Path, examples: str | Path | None = None, extra: list[str] = (),
                   timeout: float = 120.0):
    """``tcl serve`` in a subprocess on a free loopback port; yields (base URL, process)."""
    port = free_port()
    command = [sys.executable, "-m", "tcl", "serve", "--model", str(model), "--port", str(port), *extra]
    if examples:
        command += ["--examples", str(examples)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, timeout)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_up(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tcl serve exited with code {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if json.load(response)["status"] == "ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"tcl serve did not answer on {url} within {timeout:.0f} s")


def browser():
    """Headless Chromium with the flags this closed network needs (no background connections)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,920"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def ask(driver, url: str, question: str, image: str | Path | None = None, example: int | None = None,
        timeout: float = 60.0) -> dict:
    """Opens the page, chooses an uploaded image or an example thumbnail, asks, and waits for the answers and
    the heat map. Returns what the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    if image is not None:
        driver.find_element(By.ID, "image-file").send_keys(str(Path(image).resolve()))
    else:
        thumbs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples img") or False)
        thumbs[example or 0].click()
    driver.find_element(By.ID, "question").send_keys(question)
    driver.find_element(By.ID, "ask").click()
    wait.until(ready.visibility_of_element_located((By.ID, "heatmap")))
    wait.until(lambda d: d.execute_script("return document.getElementById('heatmap').naturalWidth > 0"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#answers li.answer")
    return {"answers": [row.find_element(By.CLASS_NAME, "label").text for row in rows],
            "scores": [float(row.find_element(By.CLASS_NAME, "score").text) for row in rows],
            "bar_widths": [row.find_element(By.CLASS_NAME, "bar").size["width"] for row in rows],
            "heatmap_size": driver.execute_script(
                "const m = document.getElementById('heatmap'); return [m.naturalWidth, m.naturalHeight];"),
            "error": driver.find_element(By.ID, "error").text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved VQA model folder or fine-tuning run folder")
    parser.add_argument("--image", help="image to upload (default: the first example thumbnail)")
    parser.add_argument("--examples", default=None, help="folder of example images for the page")
    parser.add_argument("--question", default="what color is the cross?")
    parser.add_argument("--out", default="serve_page.png", help="screenshot file (PNG)")
    args = parser.parse_args(argv)
    with running_server(args.model, args.examples) as (url, _process):
        driver = browser()
        try:
            shown = ask(driver, url, args.question, image=args.image)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(json.dumps(shown, indent=2))
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
