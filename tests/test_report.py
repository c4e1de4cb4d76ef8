"""report.html of eval.py, lab.py and compose.py, opened in a real headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by selenium; nothing downloaded): no console errors,
one dot per network, hover shows the network, the budget slider picks what eval.py picks."""

from __future__ import annotations

import csv
import math
import re
import time

import pytest
import yaml
from browser import chromium, open_page
from conftest import run_entry
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from test_compose import _pool_args
from test_eval_cli import checkpoint  # noqa: F401 (a fixture)
from test_lab import RECIPE, recipe  # noqa: F401 (a fixture)

from snnet.compose.main import main as compose_main
from snnet.evaluate.main import main as eval_main
from snnet.evaluate.pareto import pick
from snnet.evaluate.results import read_results
from snnet.lab.main import main as lab_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module."""
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def eval_out(capsys, args) -> str:
    capsys.readouterr()
    assert run_entry(eval_main, args) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def swept(checkpoint, tmp_path_factory):  # noqa: F811
    """eval.py on a tiny digits SN-Net (test_eval_cli's checkpoint), latency measured."""
    out = tmp_path_factory.mktemp("report-eval")
    # its EMA weights: their frontier has three networks (the other weights' one)
    args = ["--resume", checkpoint, "--use-ema", "--dataset", "digits", "--workers", "0", "-b", "120", "--output", out,
            "--log-interval", "0", "--measure-latency", "--latency-warmup", "1", "--latency-repeats", "2"]  # fmt: skip
    assert run_entry(eval_main, args) == 0
    return out, args


def picked(driver) -> str:
    ids = [d.get_attribute("data-id") for d in driver.find_elements(By.CSS_SELECTOR, "#plot .dot.picked")]
    assert len(ids) == 1, ids
    assert driver.find_element(By.ID, "budget-pick").get_attribute("data-cfg-id") == ids[0]
    return ids[0]


def test_sweep_report_dots_hover_slider_and_table(browser, swept, capsys):
    out, args = swept
    rows = read_results(out / "stitches.csv")
    open_page(browser, out / "report.html")
    dots = browser.find_elements(By.CSS_SELECTOR, "#plot .dot")
    assert len(dots) == len(rows) == 12
    # the frontier the page draws is eval.py's pareto.csv
    frontier = {str(r["cfg_id"]) for r in read_results(out / "pareto.csv")}
    assert {
        d.get_attribute("data-id") for d in browser.find_elements(By.CSS_SELECTOR, "#plot .dot.frontier")
    } == frontier
    by_id = {str(r["cfg_id"]): r for r in rows}
    for dot in (dots[0], dots[len(dots) // 2], dots[-1]):
        ActionChains(browser).move_to_element(dot).perform()
        name = by_id[dot.get_attribute("data-id")]["name"]
        assert name in browser.find_element(By.CSS_SELECTOR, "#plot .tooltip").text
        assert name in browser.find_element(By.ID, "details").text

    # the slider, moved with the keyboard: the page's pick is eval.py --budget-flops's
    # the slider, moved with the keyboard to just above each frontier network's FLOPs (its
    # 1000 steps span the networks' FLOPs on a log scale): the page's pick is eval.py's
    slider = browser.find_element(By.ID, "budget-flops")
    lo, hi = min(r["flops"] for r in rows), max(r["flops"] for r in rows)
    front = sorted(read_results(out / "pareto.csv"), key=lambda r: r["flops"])
    assert len(front) >= 3, "the fixture's weights should give a frontier of several networks"
    seen = []
    for row in front:
        steps = math.ceil(1000 * math.log(row["flops"] / lo) / math.log(hi / lo))
        slider.send_keys(Keys.HOME + Keys.ARROW_RIGHT * steps)
        budget = browser.find_element(By.ID, "budget-flops-text").text
        stdout = eval_out(capsys, args + ["--budget-flops", budget])
        cfg_id = re.search(r"Best network within [^:]*: cfg_id (\d+) \(", stdout).group(1)
        assert picked(browser) == cfg_id, (budget, stdout)
        command = browser.find_element(By.ID, "commands").text
        assert f"--budget-flops {budget} --export best --export-path cfg{cfg_id}.pt" in command
        assert f"--export {cfg_id} --export-path cfg{cfg_id}.pt" in command
        seen.append(cfg_id)
    assert len(set(seen)) == len(front)  # a different network at each budget

    # the latency view: same networks, the latency frontier of pareto_latency.csv
    browser.find_element(By.CSS_SELECTOR, "input[name=cost][value=latency_ms]").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot .dot")) == len(rows)
    frontier = {str(r["cfg_id"]) for r in read_results(out / "pareto_latency.csv")}
    assert {
        d.get_attribute("data-id") for d in browser.find_elements(By.CSS_SELECTOR, "#plot .dot.frontier")
    } == frontier

    # keyboard: a focused dot shows its network; arrow keys move to the next one
    first = browser.find_element(By.CSS_SELECTOR, "#plot .dot")
    browser.execute_script("arguments[0].focus()", first)
    before = browser.find_element(By.ID, "details-title").text
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element.get_attribute("data-id") != first.get_attribute("data-id")
    assert browser.find_element(By.ID, "details-title").text != before

    # the table: every network, sorted by top-1 on a click
    browser.find_element(By.XPATH, "//th/button[text()='top-1 (%)']").click()
    order = [tr.get_attribute("data-id") for tr in browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")]
    assert order == [str(r["cfg_id"]) for r in sorted(rows, key=lambda r: (r["top1"], r["cfg_id"]))]


def test_page_pick_rule_is_eval_pick_rule(browser, swept):
    """The page's JavaScript pick against snnet.evaluate.pareto.pick on budgets at, between and
    beyond every network's cost, FLOPs, latency and both."""
    out, _ = swept
    rows = read_results(out / "stitches.csv")
    open_page(browser, out / "report.html")
    flops = sorted({r["flops"] for r in rows})
    lats = sorted({r["latency_ms"] for r in rows})
    budgets_f = flops + [(a + b) / 2 for a, b in zip(flops, flops[1:])] + [flops[0] / 2, flops[-1] * 2]
    budgets_l = lats + [(a + b) / 2 for a, b in zip(lats, lats[1:])] + [lats[-1] * 2]
    cases = [(f, None) for f in budgets_f] + [(None, v) for v in budgets_l]
    cases += [
        (f, v) for f in budgets_f[:: max(1, len(budgets_f) // 6)] for v in budgets_l[:: max(1, len(budgets_l) // 6)]
    ]

    def python_pick(f, v):
        try:
            return pick(rows, f, v)["cfg_id"]
        except Exception:  # BudgetError: nothing fits
            return None

    script = "return arguments[0].map(([f, v]) => { const r = snnetReport.pick(ROWS, f, v); return r && r.cfg_id; });"
    assert browser.execute_script(script, [list(c) for c in cases]) == [python_pick(f, v) for f, v in cases]
    # the budget text the slider shows is read back by eval.py's parser to the same number
    from snnet.evaluate.pareto import parse_flops

    for value in budgets_f:
        text = browser.execute_script("return snnetReport.budgetText(arguments[0], true)", value)
        assert parse_flops(text) >= value and parse_flops(text) == browser.execute_script(
            "return snnetReport.parseFlops(arguments[0])", text
        )


def test_sweep_report_reads_at_phone_width_and_rebuilds_from_the_csv(browser, swept, tmp_path):
    out, args = swept
    open_page(browser, out / "report.html", width=390)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than a phone"
    # --report-only: the same networks, from stitches.csv alone (no data pass)
    for name in ("stitches.csv", "pareto.csv", "sweep_partial.jsonl"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    assert run_entry(eval_main, ["--resume", args[1], "--report-only", "--output", tmp_path]) == 0
    open_page(browser, tmp_path / "report.html")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot .dot")) == 12
    assert str(args[1]) in browser.find_element(By.ID, "meta").text  # the checkpoint it evaluated


@pytest.mark.slow
def test_lab_report_shows_its_cells(browser, recipe, tmp_path):  # noqa: F811
    config = tmp_path / "lab.yaml"
    ti, s = RECIPE["anchors"]
    grid = {
        "routes": [f"{ti}[:2]>{s}[2:]", f"{ti}[:3]>{s}[3:]"],
        "adapters": ["linear", "mlp"],
        "lrs": [2e-3],
        "seeds": [0],
    }
    config.write_text(yaml.safe_dump({**recipe, **grid, "epochs": 2, "max_steps_per_epoch": 2}))
    assert run_entry(lab_main, ["-c", config, "--output", tmp_path / "out"]) == 0
    out = tmp_path / "out" / "lab"
    cells = list(csv.DictReader((out / "cells.csv").open()))
    open_page(browser, out / "report.html")
    rects = browser.find_elements(By.CSS_SELECTOR, ".cell-rect")
    assert len(rects) == len(cells) == 4  # one route, adapter and lr per cell here: one seed
    ActionChains(browser).move_to_element(rects[0]).perform()
    details = browser.find_element(By.ID, "details").text
    route, adapter = rects[0].get_attribute("data-id").split("|")
    assert route in details and adapter in details
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trajectory .dot")) == 2  # its one cell's 2 epochs
    assert len(browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")) == 4


def test_compose_report_shows_its_candidates(browser, tmp_path):
    out = tmp_path / "compose"
    argv = _pool_args() + ["--threshold", "0", "--total-threshold", "0", "--max-depth", "2", "--top-k", "2"]
    argv += ["--max-networks", "3", "--stitch-images", "16", "--fit-images", "200", "--output", out]
    assert run_entry(compose_main, argv) == 0
    rows = list(csv.DictReader((out / "candidates.csv").open()))
    open_page(browser, out / "report.html")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot-flops .dot:not(.anchor)")) == len(rows) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot-flops .dot.anchor")) == 2  # the pool
    assert len(browser.find_elements(By.CSS_SELECTOR, "#drawings img.drawing")) == 3
    ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, "#plot-score .dot")).perform()
    assert any(r["name"] in browser.find_element(By.ID, "details").text for r in rows)


@pytest.mark.slow
def test_report_of_the_134_network_two_way_snnet_opens_in_the_browser(browser, tmp_path, capsys):
    """SN-Netv2's DeiT3-S/L two-way SN-Net (depths 12 / 24: 134 networks, at a tiny width) swept
    on the digits by eval.py; the time its report takes to open is printed (not asserted)."""
    out = tmp_path / "two-way"
    args = ["--anchors", "deit3_small_patch16_224", "deit3_large_patch16_224", "--anchor-kwargs",
            "embed_dim=32 num_heads=2", "embed_dim=48 num_heads=2", "--model-kwargs", "patch_size=8",
            "--img-size", "32", "--stitching", "two-way", "--dataset", "digits", "--workers", "0", "-b", "360",
            "--output", out, "--log-interval", "0"]  # fmt: skip
    assert run_entry(eval_main, args) == 0
    rows = read_results(out / "stitches.csv")
    assert len(rows) == 134
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        drawn = open_page(browser, out / "report.html")
        timings.append((drawn, time.perf_counter() - start))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#plot .dot")) == 134
        assert len(browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")) == 134
    size = (out / "report.html").stat().st_size
    with capsys.disabled():
        print(
            f"\nreport.html of the 134-network two-way SN-Net ({size / 1e6:.2f} MB): drawn and laid out "
            + ", ".join(f"{d:.2f} s" for d, _ in timings)
            + " after navigation start (the browser's clock); "
            + ", ".join(f"{w:.2f} s" for _, w in timings)
            + " from driver.get to seen drawn"
        )
