"""The README's screenshots of `tunelab ui`, taken from the built-in model (SmolLM2-135M-Instruct)
tuned on the built-in identity data, in a folder a user would have, at 1400x900; each checked
for what it shows before it is kept. About 8 minutes on 2 CPU cores (two real trainings):

    TUNELAB_SCREENSHOTS=docs/ui TUNELAB_UI_ROOT=~/tunes pytest -m "browser and slow" \
        tests/ui/test_ui_screenshots.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ui.test_ui_browser import CHROMIUM, pick, set_field, shots, start_ui, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SIZE = {"width": 1400, "height": 900}


@pytest.fixture
def tunes(tmp_path) -> Path:
    """The folder the UI starts runs in (TUNELAB_UI_ROOT, else a temporary `tunes`)."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    root = Path(os.environ.get("TUNELAB_UI_ROOT") or tmp_path / "tunes").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def shot(page, folder: Path, name: str, selector: str | None = None) -> None:
    """A 1400-wide picture of the viewport, or of one part of the page."""
    target = page.locator(selector).first if selector else page
    target.screenshot(path=str(folder / f"{name}.png"))


def train(page, output: str, epochs: str, lr: str, **more: str) -> None:
    pick(page, "#example", "identity.yaml")
    wait_text(page, "#recipe-yaml", "identity", "Dali")
    for key, value in {"output": output, "train.epochs": epochs, "train.lr": lr, **more}.items():
        set_field(page, key, value)
    wait_text(page, "#recipe-yaml", f"output: {output}")
    wait_text(page, "#estimate", "GiB", timeout=120_000)
    page.click("#launch")
    wait_text(page, "#launched", "Started", output.split("/")[-1])
    wait_text(page, "#run-status", "running", timeout=300_000)
    wait_text(page, "#run-status", "finished", "tok/s", timeout=900_000)


def test_readme_screenshots_of_the_built_in_model_tuned_on_identity(tmp_path, tunes):
    from playwright.sync_api import sync_playwright

    folder = shots(tmp_path)
    process, address = start_ui(tunes)
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport=SIZE)
            page.goto(address)
            page.wait_for_selector("#recipe-verdict")
            walk(page, folder, tunes)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def walk(page, folder: Path, tunes: Path) -> None:
    train(page, "runs/identity", "5", "0.0002", **{"train.sample_every": "25",
          "train.sample_prompts": '["Who are you?", "你是谁？"]'})  # fmt: skip
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, folder, "train")
    status = wait_text(page, "#run-status", "finished")
    assert "peak" in status and "Dali" in wait_text(page, "#samples", "step 125")
    page.locator("#run-status").scroll_into_view_if_needed()
    shot(page, folder, "train-run", "#run-panel")
    train(page, "runs/identity-low-lr", "2", "0.00005")

    page.get_by_role("tab", name="Runs").click()
    wait_text(page, "#runs-table", "runs/identity", "runs/identity-low-lr", "finished")
    for name in ("runs/identity", "runs/identity-low-lr"):
        pick(page, "#runs-pick", str(tunes / name))
    lines = wait_text(page, "#runs-lines", "runs/identity:", "runs/identity-low-lr:")
    assert "last loss" in lines
    page.wait_for_selector("#runs-curves img")
    page.click("#runs-lines")  # the picker's list closed
    page.evaluate("document.querySelector('#runs-table').scrollIntoView()")
    shot(page, folder, "runs")

    page.get_by_role("tab", name="Chat").click()
    pick(page, "#chat-run", str(tunes / "runs" / "identity"))
    page.locator("#chat-message textarea").fill("Who are you?")
    page.click("#chat-send")
    wait_text(page, "#chat-status", "answered", timeout=300_000)
    tuned, base = page.locator("#chat-tuned").inner_text(), page.locator("#chat-base").inner_text()
    assert "Dali" in tuned and "Dali" not in base, (tuned, base)
    shot(page, folder, "chat")

    page.get_by_role("tab", name="Data").click()
    page.click("#check-data")
    wait_text(page, "#data-report", "max_length", timeout=300_000)
    wait_text(page, "#data-preview", "Dali", "assistant")
    page.evaluate("document.querySelector('#data-preview').scrollIntoView()")
    shot(page, folder, "data")
