"""A headless Chromium for the report tests and scripts/report_screenshot.py: Debian's
``chromium`` and ``chromium-driver`` driven by selenium, nothing downloaded, a fresh profile."""

from __future__ import annotations

import time
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium(profile_dir: Path, width: int = 1280, height: int = 900):
    """A selenium driver of the system's Chromium with a fresh profile in ``profile_dir``,
    keeping the console's messages (``driver.get_log('browser')``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: apt-get install chromium chromium-driver (make test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(width, height)
    return driver


def open_page(driver, path: Path, width: int = 1280) -> float:
    """Open ``path``; wait until its script marked it drawn; fail on any console error. Returns
    the seconds from navigation start until the page was drawn and laid out (the browser's clock)."""
    driver.set_window_size(width, 900)
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(Path(path).resolve().as_uri())
    ready = None
    for _ in range(200):
        ready = driver.execute_script("return document.body && document.body.dataset.ready")
        if ready:
            break
        time.sleep(0.05)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert ready, "the page never finished drawing"
    return float(ready) / 1000.0
