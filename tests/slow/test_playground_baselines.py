"""The playground on the real MiniLM baselines in a real browser: an obviously positive and an obviously negative
sentence read as such at every precision, and `John Smith` is highlighted as a person. Skipped where the baselines
or the browser are absent. Full-page screenshots go to `<basetemp>/playground-baselines/` (the README's is one)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from quantization.build import build_artifact, evaluate_artifact, load_checkpoint
from quantization.catalog import load_catalog
from tests.conftest import SHARED_DATA, SHARED_MODELS
from tests.integration import browser as page
from tests.integration.server import RunningServer, start_server

pytestmark = [
    pytest.mark.skipif(
        not (SHARED_MODELS / "minilm-l6-sst2" / "model.safetensors").exists() or not SHARED_DATA.is_dir(),
        reason=f"FP32 baselines not found under {SHARED_MODELS}",
    ),
    pytest.mark.skipif(page.MISSING is not None, reason=str(page.MISSING)),
]
PRECISIONS = ("fp32", "w8", "w4g128")
EVALUATED = ("sst2",)  # its dev set takes seconds; the page shows "accuracy not recorded" for the others


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    catalog, root = load_catalog(), tmp_path_factory.mktemp("playground-baselines")
    for task in ("sst2", "ner"):
        entry = catalog.task(task)
        checkpoint = load_checkpoint(entry.checkpoint_location(), task)
        for precision in PRECISIONS:
            out = root / "artifacts" / task / precision
            build_artifact(checkpoint, entry, catalog.precision_for(task, precision), out)
            if task in EVALUATED:
                evaluate_artifact(out, entry, latency_samples=2)
    running = start_server(root / "artifacts", root / "serve.log", max_wait_ms="5", default_precision="w8")
    yield running
    assert running.stop() in (0, -signal.SIGTERM), running.log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with page.chromium() as driver:
        yield driver


def _shot(driver: WebDriver, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return page.save_screenshot(driver, tmp_path_factory.getbasetemp() / "playground-baselines" / f"{name}.png")


@pytest.mark.parametrize(
    ("sentence", "label"),
    [
        ("a wonderful, moving film, full of warmth and humor and beautifully acted .", "positive"),
        ("a dull , tedious and badly acted mess that wastes every minute .", "negative"),
    ],
)
def test_obvious_sentiment_reads_right_at_every_precision(
    server: RunningServer, browser: WebDriver, tmp_path_factory: pytest.TempPathFactory, sentence: str, label: str
) -> None:
    page.open_playground(browser, server.url, "sst2")
    page.fill(browser, "text", sentence)
    cards = page.send_to_every_precision(browser, len(PRECISIONS))
    assert sorted(cards) == sorted(PRECISIONS)
    shown = {p: card.find_element(By.CSS_SELECTOR, ".label").get_attribute("data-label") for p, card in cards.items()}
    assert shown == dict.fromkeys(PRECISIONS, label)
    assert all("accuracy" in card.text for card in cards.values())
    _shot(browser, tmp_path_factory, f"sst2-{label}")


def test_ner_highlights_john_smith_as_a_person_at_every_precision(
    server: RunningServer, browser: WebDriver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    page.open_playground(browser, server.url, "ner")
    page.fill(browser, "text", "John Smith flew from Paris to Berlin to meet the board of Siemens .")
    cards = page.send_to_every_precision(browser, len(PRECISIONS))
    for precision, card in cards.items():
        assert ("PER", "John Smith") in page.shown_entities(card), precision
    _shot(browser, tmp_path_factory, "ner")
