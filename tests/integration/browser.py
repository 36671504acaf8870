"""A real browser for the playground's tests: Debian's Chromium, headless, driven by Selenium through its
chromedriver (both from `make system-packages`; no browser download)."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else "chromium and chromium-driver are missing: make system-packages"


@contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=ChromeService(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver: WebDriver, path: Path) -> Path:
    """The whole page, beyond the window's height."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def open_playground(driver: WebDriver, url: str, task: str) -> None:
    driver.get(url + "/playground")
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#model option[value={task}]"))
    Select(driver.find_element(By.ID, "model")).select_by_value(task)


def fill(driver: WebDriver, field: str, text: str) -> None:
    element = driver.find_element(By.ID, field)
    element.clear()
    element.send_keys(text)


def send_to_every_precision(driver: WebDriver, precisions: int) -> dict[str, WebElement]:
    """Send with the keyboard (the button focused, Enter) and wait for every precision's card, by precision."""
    driver.execute_script("document.getElementById('answers').replaceChildren()")
    driver.find_element(By.ID, "send").send_keys(Keys.ENTER)
    WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#answers .answer")) == precisions)
    return {card.get_attribute("data-precision"): card for card in driver.find_elements(By.CSS_SELECTOR, ".answer")}


def shown_entities(card: WebElement) -> list[tuple[str, str]]:
    """(type, text) of each highlighted entity, in reading order (the type's tag is not part of the text)."""
    marks = card.find_elements(By.CSS_SELECTOR, "mark.entity")
    return [(m.get_attribute("data-type"), m.text.removesuffix(m.get_attribute("data-type")).strip()) for m in marks]
