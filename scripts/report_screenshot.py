"""A full-page screenshot of a report.html, taken by the headless Chromium the tests drive.

    python scripts/report_screenshot.py results/demo/report.html results/demo/report.png --width 1280
    python scripts/report_screenshot.py results/demo/report.html results/demo/report-390px.png --width 390

``--select N`` first hovers the dot of network N (the page then shows its details), as a reader
would. Needs Debian's chromium and chromium-driver and selenium (the test extra).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' browser launcher
from browser import chromium, open_page  # noqa: E402


def hover(driver, cfg_id: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    dot = driver.find_element(By.CSS_SELECTOR, f'#plot .dot[data-id="{cfg_id}"]')
    ActionChains(driver).move_to_element(dot).perform()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the report.html")
    parser.add_argument("png", type=Path, help="where the screenshot goes")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    parser.add_argument("--select", type=int, default=None, metavar="N", help="hover network N's dot first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(Path(profile), args.width)
        try:
            seconds = open_page(driver, args.page, args.width)
            if args.select is not None:  # the details panel's height counts
                hover(driver, args.select)
            for _ in range(3):  # the window's height sizes the table (70vh): until the page fits
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(args.width, height)
                time.sleep(0.3)  # the resize redraws the plots
            if args.select is not None:
                hover(driver, args.select)
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(args.png))
        finally:
            driver.quit()
    print(f"{args.page} drawn in {seconds:.2f} s; wrote {args.png} ({args.width} px wide)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
