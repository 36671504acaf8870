"""The playground page in a real browser (Debian's Chromium through Selenium) against a live `qbert serve`.

Each view is checked against the API's own answers for the same input, and saved as a full-page screenshot under
`<basetemp>/playground/`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration import browser as page
from tests.integration.server import RunningServer, start_server

pytestmark = pytest.mark.skipif(page.MISSING is not None, reason=str(page.MISSING))
PRECISIONS = ["fp32", "w8", "w2g128"]  # what `tiny_artifacts` builds, highest bits first as the page lists them
API_KEY = "playground-key"


def _stopped(running: RunningServer) -> None:
    assert running.stop() in (0, -signal.SIGTERM), running.log.read_text()


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tiny_artifacts, tmp_path_factory.mktemp("playground") / "serve.log", max_wait_ms="5")
    yield running
    _stopped(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with page.chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[WebDriver, str], Path]:
    folder = tmp_path_factory.getbasetemp() / "playground"
    return lambda driver, name: page.save_screenshot(driver, folder / f"{name}.png")


def _answers(driver: WebDriver) -> dict:
    return page.send_to_every_precision(driver, len(PRECISIONS))


def _api(server: RunningServer, path: str, precision: str, body: dict) -> dict:
    response = httpx.post(f"{server.url}/{path}?precision={precision}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.mark.parametrize("sentence", ["a wonderful, moving film", "a dull and tedious mess"])
def test_a_sentence_goes_to_every_precision_and_each_shows_its_label(
    server: RunningServer, browser: WebDriver, screenshot: Callable, sentence: str
) -> None:
    page.open_playground(browser, server.url, "sst2")
    page.fill(browser, "text", sentence)
    cards = _answers(browser)
    assert list(cards) == PRECISIONS
    fp32_label = _api(server, "predict/sst2", "fp32", {"text": sentence})["results"][0]["label"]
    for precision, card in cards.items():
        expected = _api(server, "predict/sst2", precision, {"text": sentence})["results"][0]
        assert card.find_element(By.CSS_SELECTOR, ".label").get_attribute("data-label") == expected["label"]
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert {bar.get_attribute("data-label") for bar in bars} == set(expected["scores"])
        assert float(card.find_element(By.CSS_SELECTOR, ".latency").get_attribute("data-ms")) > 0
        assert "bits/weight" in card.text
        assert "resident" in card.text
        assert "accuracy" in card.text
        differs = "differs" in (card.get_attribute("class") or "")
        assert differs == (expected["label"] != fp32_label)
    screenshot(browser, "sst2")


def test_ner_highlights_each_entity_with_its_type(
    server: RunningServer, browser: WebDriver, screenshot: Callable
) -> None:
    text = "John Smith flew from Paris to Berlin to meet the board of Acme Corp in London ."
    page.open_playground(browser, server.url, "ner")
    page.fill(browser, "text", text)
    cards = _answers(browser)
    for precision, card in cards.items():
        expected = _api(server, "predict/ner", precision, {"text": text})["entities"]
        assert page.shown_entities(card) == [
            (e["type"], text[e["start"] : e["end"]]) for e in sorted(expected, key=lambda e: e["start"])
        ]
    screenshot(browser, "ner")


def test_qa_highlights_the_answer_span_in_the_context(
    server: RunningServer, browser: WebDriver, screenshot: Callable
) -> None:
    question, context = "where does john smith work ?", "john smith lives in paris . he works at acme corp ."
    page.open_playground(browser, server.url, "qa")
    page.fill(browser, "question", question)
    page.fill(browser, "context", context)
    cards = _answers(browser)
    for precision, card in cards.items():
        expected = _api(server, "qa", precision, {"question": question, "context": context})
        assert (
            card.find_element(By.CSS_SELECTOR, "mark.answer-span").text == context[expected["start"] : expected["end"]]
        )
    screenshot(browser, "qa")


def test_the_charts_have_one_point_per_precision(
    server: RunningServer, browser: WebDriver, screenshot: Callable
) -> None:
    page.open_playground(browser, server.url, "sst2")
    _answers(browser)  # the service's latency percentiles exist once a request has been answered
    WebDriverWait(browser, 15).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-chart=latency] circle.point")) == 2 * len(PRECISIONS)
    )
    for chart, series in (("accuracy", ["accuracy"]), ("latency", ["p50", "p95"]), ("size", ["packed", "resident"])):
        points = browser.find_elements(By.CSS_SELECTOR, f"[data-chart={chart}] circle.point")
        for name in series:
            drawn = sorted(p.get_attribute("data-precision") for p in points if p.get_attribute("data-series") == name)
            assert drawn == sorted(PRECISIONS), (chart, name)
    screenshot(browser, "charts")


def test_the_page_fits_a_phone_and_keeps_its_labels(
    server: RunningServer, browser: WebDriver, screenshot: Callable
) -> None:
    browser.set_window_size(390, 844)
    try:
        page.open_playground(browser, server.url, "qa")
        _answers(browser)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        for field in ("model", "api-key", "question", "context"):
            assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field}']"), field
        screenshot(browser, "phone-qa")
    finally:
        browser.set_window_size(1280, 800)


def test_a_wrong_api_key_reads_as_a_message(
    tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory, browser: WebDriver, screenshot: Callable
) -> None:
    log = tmp_path_factory.mktemp("playground-key") / "serve.log"
    guarded = start_server(tiny_artifacts, log, max_wait_ms="5", api_key=API_KEY)
    try:
        browser.get(guarded.url + "/")
        message = browser.find_element(By.ID, "message")
        WebDriverWait(browser, 15).until(lambda d: "API key" in message.text)
        page.fill(browser, "api-key", "not-the-key")
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 15).until(lambda d: "API key" in message.text)
        screenshot(browser, "wrong-key")
        page.fill(browser, "api-key", API_KEY)
        browser.find_element(By.ID, "api-key").send_keys(Keys.TAB)  # `change`: the page lists the models again
        try:
            WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        except TimeoutException:
            pytest.fail(f"the right key did not unlock the page: {message.text!r}")
    finally:
        _stopped(guarded)


def test_busy_and_not_ready_answers_read_as_sentences(server: RunningServer, browser: WebDriver) -> None:
    """The page's wording for the statuses a live tiny service does not produce on demand (429 queue full, 503 not
    ready), through the function the page itself calls."""
    page.open_playground(browser, server.url, "sst2")
    busy, not_ready = browser.execute_script(
        "return [describeError(429, {error: 'queue_full'}, '2'),"
        " describeError(503, {error: 'model_not_ready', detail: 'sst2/w8 is compiling'}, '5')]"
    )
    assert busy == "The service is busy (its queue is full). Try again in 2 s."
    assert not_ready == "Not ready yet: sst2/w8 is compiling. Try again in 5 s."
