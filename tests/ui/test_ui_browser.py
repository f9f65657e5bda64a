"""`tunelab ui` in a real browser: Debian's chromium, driven by playwright through its system
executable. The page trains a tiny model on the built-in identity data, shows the loss points
and the finished run, answers in the chat tab, and says in place what is wrong with a bad
field, a missing file and a failed run. A screenshot of each tab is saved beside the test's
files (tests/screenshots/ when TUNELAB_SCREENSHOTS is set to a folder).

    pytest -m browser
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def start_ui(root: Path, *options: str):
    """`tunelab ui` on a free port; (process, its address as it printed it)."""
    from tests.serve.test_serve import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "ui", "--root", str(root), "--port", str(port), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root,
    )  # fmt: skip
    first = process.stdout.readline().strip()
    assert first == f"http://127.0.0.1:{port}/", first  # 127.0.0.1 unless told otherwise
    return process, first


@pytest.fixture
def ui(tmp_path):
    """A running `tunelab ui` on a free port (its root: tmp_path); its address."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    pytest.importorskip("gradio")
    pytest.importorskip("playwright")
    process, address = start_ui(tmp_path)
    yield address
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1100})
        tab.goto(ui)
        tab.wait_for_selector("#recipe-verdict")
        yield tab
        browser.close()


def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("TUNELAB_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def set_field(page, key: str, value: str) -> None:
    box = page.locator(
        f"#field-{key.replace('.', '-')} textarea, #field-{key.replace('.', '-')} input"
    ).first
    if not box.is_visible():  # folded under its section's "more"
        section = key.partition(".")[0] if "." in key else "output and stages"
        page.get_by_text(f"more: {section}", exact=True).click()
    box.fill(value)
    box.press("Tab")


def wait_text(page, selector: str, *words: str, timeout: float = 120_000) -> str:
    from playwright.sync_api import TimeoutError as Late

    try:
        page.wait_for_function(
            "([s, words]) => { const e = document.querySelector(s); if (!e) return false;"
            " const t = e.innerText + [...e.querySelectorAll('textarea, input')]"
            ".map(x => x.value).join(' '); return words.every(w => t.includes(w)); }",
            arg=[selector, list(words)],
            timeout=timeout,
        )
    except Late:
        shown = text_of(page, selector) if page.locator(selector).count() else None
        pytest.fail(f"{selector} never showed {words}; it shows: {shown!r}")
    return text_of(page, selector)


def text_of(page, selector: str) -> str:
    """What an element shows, the values of its text boxes included."""
    return page.evaluate(
        "s => { const e = document.querySelector(s); return e.innerText + ' ' +"
        " [...e.querySelectorAll('textarea, input')].map(x => x.value).join(' '); }",
        selector,
    )


def pick(page, selector: str, value: str) -> None:
    box = page.locator(f"{selector} input").first
    box.fill(value)
    box.press("Enter")


def loss_points(page) -> int:
    status = text_of(page, "#run-status")
    found = [
        int(w) for w, n in zip(status.split(), status.split()[1:]) if n == "loss" and w.isdigit()
    ]
    return found[0] if found else 0


def launch(page, output: str, lr: str) -> None:
    set_field(page, "output", output)
    set_field(page, "train.lr", lr)
    wait_text(page, "#recipe-yaml", f"output: {output}")
    page.click("#launch")
    wait_text(page, "#launched", "Started", output.split("/")[-1])


def test_a_newcomer_walks_through_train_stop_resume_compare_chat_export(
    page, tmp_path, tiny_model_dir
):
    """The identity example loaded, its estimate seen, a run started, its loss chart
    followed, stopped and resumed; a second run; both runs' curves overlaid; the tuned run and
    its base answering side by side; the data checked; an export. (The tiny model stands in
    for the built-in one, whose README screenshots come from test_readme_screenshots.)"""
    folder = shots(tmp_path)
    pick(page, "#example", "identity.yaml")
    wait_text(page, "#recipe-yaml", "identity", "Dali")
    set_field(page, "model.path", str(tiny_model_dir))
    set_field(page, "train.max_steps", "40")
    set_field(page, "train.save_every", "5")
    wait_text(page, "#estimate", "GiB", timeout=60_000)  # the estimate follows the form
    launch(page, "runs/first", "0.002")
    wait_text(page, "#run-status", "running", "loss points")
    seen = loss_points(page)
    page.wait_for_function(
        "n => /(\\d+) loss points/.exec(document.querySelector('#run-status').innerText)"
        "?.[1] > n", arg=seen, timeout=60_000)  # fmt: skip
    page.wait_for_selector("#loss-plot g.mark-line path")  # the loss line is drawn
    page.click("#stop")
    wait_text(page, "#launched", "saves a checkpoint")
    stopped = wait_text(page, "#run-status", "stopped")
    assert "finished" not in stopped
    page.click("#resume")
    wait_text(page, "#launched", "Resumed")
    assert "at step 40" in wait_text(page, "#run-status", "finished", "tok/s")
    page.screenshot(path=str(folder / "train.png"), full_page=True)
    launch(page, "runs/second", "0.0005")
    wait_text(page, "#run-status", "running")
    wait_text(page, "#run-status", "finished", "tok/s")

    page.get_by_role("tab", name="Runs").click()
    wait_text(page, "#runs-table", "runs/first", "runs/second", "finished", "lora")
    for name in ("runs/first", "runs/second"):
        pick(page, "#runs-pick", str(tmp_path / name))
    lines = wait_text(page, "#runs-lines", "runs/first: 40 points", "runs/second: 40 points")
    assert "last loss" in lines
    page.wait_for_selector("#runs-curves img")  # the two curves on one chart
    pick(page, "#runs-open", str(tmp_path / "runs/first"))
    assert '"steps": 40' in wait_text(page, "#runs-summary", "tokens_per_second")
    page.screenshot(path=str(folder / "runs.png"), full_page=True)

    page.get_by_role("tab", name="Chat").click()
    run = str(tmp_path / "runs" / "first")
    pick(page, "#chat-run", f"{run}@40")  # a checkpoint, as RUN@STEP
    page.locator("#chat-message textarea").fill("Who are you?")
    page.click("#chat-send")
    wait_text(page, "#chat-status", "answered", timeout=180_000)
    assert page.locator("#chat-tuned").inner_text().count("Who are you?") == 1
    assert page.locator("#chat-base").inner_text().count("Who are you?") == 1
    page.screenshot(path=str(folder / "chat.png"), full_page=True)
    page.get_by_role("tab", name="Evaluate").click()
    pick(page, "#eval-run", run)
    page.click("#compare")
    wait_text(page, "#eval-report", "probe", timeout=300_000)

    page.get_by_role("tab", name="Data").click()
    page.click("#check-data")
    report = wait_text(page, "#data-report", "max_length")
    assert "bad row" in report or "rows" in report
    page.screenshot(path=str(folder / "data.png"), full_page=True)
    registry = SHARED_DATA / "llamafactory" / "dataset_info.json"
    if registry.is_file():  # pick registry entries: they become data.train
        page.locator("#registry textarea, #registry input").first.fill(str(registry))
        page.get_by_role("button", name="List its entries").click()
        pick(page, "#entries", "alpaca_en_demo")
        page.click("#use-data")
        page.get_by_role("tab", name="Train").click()
        recipe = wait_text(page, "#recipe-yaml", "alpaca_en_demo", "registry:")
        assert "identity" not in recipe

    page.get_by_role("tab", name="Export").click()
    pick(page, "#export-run", run)
    page.locator("#export-out textarea, #export-out input").first.fill(str(tmp_path / "merged"))
    page.click("#export")
    wait_text(page, "#export-log", str(tmp_path / "merged"), timeout=300_000)
    assert (tmp_path / "merged" / "config.json").is_file()
    page.screenshot(path=str(folder / "export.png"), full_page=True)


def test_the_page_says_what_is_wrong_and_where(page, tmp_path, tiny_model_dir):
    set_field(page, "model.path", str(tiny_model_dir))
    set_field(page, "train.lr", "-1")
    assert "train.lr" in wait_text(page, "#recipe-verdict", "Not valid", "train.lr")
    set_field(page, "train.lr", "0.0002")
    set_field(page, "data.train", "[missing.jsonl]")
    verdict = wait_text(page, "#recipe-verdict", "Not valid", "missing.jsonl")
    assert "is not a file" in verdict
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": 3}\n', "utf-8")
    set_field(page, "data.train", f"[{bad}]")
    set_field(page, "output", "runs/failing")
    wait_text(page, "#recipe-verdict", "Valid recipe")
    page.click("#launch")
    wait_text(page, "#launched", "Started")
    status = wait_text(page, "#run-status", "failed", "last error")
    assert "bad.jsonl:2" in status and "output" in status, status
    page.screenshot(path=str(shots(tmp_path) / "failed-run.png"), full_page=True)


def test_auth_asks_for_the_password_before_the_page(tmp_path):
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    process, address = start_ui(tmp_path, "--auth", "admin:secret")
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            tab = browser.new_page()
            tab.goto(address)
            tab.wait_for_selector("input[type=password]")
            assert tab.locator("#recipe-verdict").count() == 0
            inputs = tab.locator("input")
            inputs.nth(0).fill("admin")
            tab.locator("input[type=password]").fill("wrong")
            tab.keyboard.press("Enter")
            tab.wait_for_timeout(1500)
            assert tab.locator("#recipe-verdict").count() == 0
            inputs.nth(0).fill("admin")
            tab.locator("input[type=password]").fill("secret")
            tab.keyboard.press("Enter")
            tab.wait_for_selector("#recipe-verdict", timeout=30_000)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_sweep_shows_its_ranking_and_its_best_trials_curves(page, tmp_path, tiny_model_dir):
    from tests.conftest import run_cli
    from tests.test_sweep import sweep_recipe

    (tmp_path / "runs").mkdir()
    recipe = sweep_recipe(tmp_path, tiny_model_dir, "runs/lr-sweep", trials=3)
    assert run_cli("sweep", str(recipe)).returncode == 0
    page.get_by_role("tab", name="Sweeps").click()
    page.get_by_role("button", name="Refresh the sweep list").click()
    folder = str(tmp_path / "runs" / "lr-sweep")
    pick(page, "#sweep-pick", folder)
    note = wait_text(page, "#sweep-note", "Ranked by", "eval_loss", "3 trials done")
    report = json.loads(Path(folder, "sweep_report.json").read_text())
    assert f"best: trial {report['best']['trial']}" in note
    table = wait_text(page, "#sweep-ranking", "complete", "train.lr")
    for trial in report["trials"]:
        assert f"{trial['value']:.4g}" in table
    page.wait_for_selector("#sweep-curves g.mark-line path")  # the curves are drawn
    assert page.locator("#sweep-curves g.mark-line path").count() >= 1
    page.screenshot(path=str(shots(tmp_path) / "sweep.png"), full_page=True)


def test_the_train_tab_fits_one_screen_with_the_rest_folded(page):
    """The settings that matter, the YAML, the estimate and Launch at 1400 wide, under 1,200
    pixels; every other setting folded under "more"."""
    page.set_viewport_size({"width": 1400, "height": 900})
    page.wait_for_timeout(500)
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 1200, height
    for key in ("model.path", "data.train", "method.type", "train.lr", "train.batch_size"):
        assert page.locator(f"#field-{key.replace('.', '-')}").is_visible()
    assert not page.locator("#field-train-weight_decay").is_visible()  # folded
    page.get_by_text("more: train").click()
    page.locator("#field-train-weight_decay").wait_for(state="visible")
