"""The page at / in a real browser (Debian's headless Chromium through Selenium), in both modes.

Skipped, with the reason, where chromium and chromium-driver are not installed (`make test` installs
them with apt-get where it can).
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import Service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 120


def _photo(path: Path) -> Path:
    """A smooth test picture with some noise (PNG), more like a photo than random pixels."""
    import numpy as np

    y, x = np.mgrid[0:72, 0:96].astype(np.float32)
    rng = np.random.default_rng(3)
    base = np.stack([128 + 90 * np.sin(x / 9), 128 + 90 * np.cos(y / 7), 128 + 60 * np.sin((x + y) / 13)], -1)
    noisy = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (make test installs them with apt-get; "
                    "on other systems install the distribution's chromium and chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, service: Service):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(service.url + "/")
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#task option")))
    return wait


def choose(driver, select_id: str, value: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def test_restore_in_the_page_equals_the_api(browser, service: Service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    wait = open_page(driver, service)
    assert driver.title == "BBCU image restoration"
    tasks = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#task option")]
    # the tasks, and the pipelines the API describes for its task parameter
    assert sorted(tasks) == ["deblock", "deblock,sr", "denoise", "denoise,sr", "sr"]
    choose(driver, "task", "sr")
    scales = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#scale option")]
    assert scales == ["2", "4"] and driver.find_element(By.ID, "scale").get_attribute("value") == "4"
    choose(driver, "scale", "2")
    photo = _photo(tmp_path / "photo.png")
    driver.find_element(By.ID, "files").send_keys(str(photo))
    driver.find_element(By.ID, "start").click()
    link = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".job .download")))
    after = driver.find_element(By.CSS_SELECTOR, ".job img.after")
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", after)
    assert size == [192, 144]  # x2 of 96x72, shown at output size
    before = driver.find_element(By.CSS_SELECTOR, ".job img.before")
    assert before.size == after.size  # the original is shown at the restored image's size
    assert link.get_attribute("download") == "photo-sr.png"
    assert driver.find_element(By.CSS_SELECTOR, ".job .state").text == "done"
    facts = driver.find_element(By.CSS_SELECTOR, ".job .facts").text
    assert "tiny_sr_x2_l" in facts and "96×72 → 192×144" in facts and re.search(r"inference \d+ ms", facts)
    encoded = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buf) => {
          let s = ""; new Uint8Array(buf).forEach((b) => { s += String.fromCharCode(b); }); done(btoa(s));
        });""", link.get_attribute("href"))
    downloaded = base64.b64decode(encoded)
    with service.client() as c:
        direct = c.post("/restore", params={"task": "sr", "scale": 2, "format": "png"},
                        files={"image": ("photo.png", photo.read_bytes(), "image/png")})
    assert direct.status_code == 200 and downloaded == direct.content
    # the slider uncovers the original: keyboard moves it
    split = driver.find_element(By.CSS_SELECTOR, ".job .split")
    split.send_keys(Keys.ARROW_LEFT * 10)
    frame = driver.find_element(By.CSS_SELECTOR, ".job .frame")
    shown = driver.execute_script("return arguments[0].style.getPropertyValue('--split')", frame)
    assert shown == f"{split.get_attribute('value')}%"
    assert int(split.get_attribute("value")) < 50


RECORD_REQUESTS = """
    // every request the page makes: its URL and the job id the service answered with
    window.sent = [];
    const plain = window.fetch;
    window.fetch = (url, init) => plain(url, init).then((r) => {
      window.sent.push([String(url), r.headers.get("X-Job-Id")]);
      return r;
    });"""


def submitted(driver) -> list[tuple[dict[str, list[str]], str]]:  # type: ignore[no-untyped-def]
    """(query, job id) of each POST /restore the page made since RECORD_REQUESTS."""
    from urllib.parse import parse_qs, urlsplit

    return [(parse_qs(urlsplit(url).query), job) for url, job in driver.execute_script("return window.sent")
            if urlsplit(url).path == "/restore"]


def test_denoise_strength_is_auto_until_the_slider_moves(browser, service: Service,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    open_page(driver, service)
    driver.execute_script(RECORD_REQUESTS)
    choose(driver, "task", "denoise")
    assert driver.find_element(By.ID, "strength-field").is_displayed()
    assert driver.find_element(By.ID, "strength-value").text == "auto"
    assert driver.find_element(By.ID, "strength-auto").is_selected()
    photo = _photo(tmp_path / "photo.png")

    def restore() -> tuple[dict[str, list[str]], dict]:  # type: ignore[type-arg]
        before = len(submitted(driver))
        driver.find_element(By.ID, "files").send_keys(str(photo))
        driver.find_element(By.ID, "start").click()
        WebDriverWait(driver, WAIT_S).until(lambda d: len(submitted(d)) > before and d.find_element(
            By.ID, "start").is_enabled())
        query, job_id = submitted(driver)[-1]
        with service.client() as c:
            return query, c.get(f"/jobs/{job_id}").json()

    query, job = restore()
    assert query["strength"] == ["auto"] and query["task"] == ["denoise"]
    assert job["status"] == "succeeded" and job["spec"]["strength"] == "auto"
    stage = job["stages"][0]
    assert stage["sigma"] is not None and 0.0 <= stage["strength"] <= 1.0
    # moving the slider (keyboard: one step down from 1) leaves auto and sends that number
    driver.find_element(By.ID, "strength").send_keys(Keys.ARROW_LEFT)
    assert not driver.find_element(By.ID, "strength-auto").is_selected()
    assert driver.find_element(By.ID, "strength-value").text == "0.95"
    query, job = restore()
    assert query["strength"] == ["0.95"]
    assert job["status"] == "succeeded" and job["spec"]["strength"] == 0.95
    assert job["stages"][0]["strength"] == 0.95 and job["stages"][0]["sigma"] is None
    # ticking auto again goes back to it
    driver.find_element(By.ID, "strength-auto").click()
    assert driver.find_element(By.ID, "strength-value").text == "auto"
    query, _ = restore()
    assert query["strength"] == ["auto"]


def test_the_page_shows_a_problem_in_words(browser, service: Service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver = browser
    wait = open_page(driver, service)
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not a picture")
    driver.find_element(By.ID, "files").send_keys(str(fake))
    driver.find_element(By.ID, "start").click()
    problem = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".job .problem")))
    with service.client() as c:
        answer = c.post("/restore", params={"task": "denoise"},
                        files={"image": ("notes.png", fake.read_bytes(), "image/png")}).json()
    assert problem.text == f"{answer['title']}: {answer['detail']}"
    assert problem.get_attribute("role") == "alert"
    assert driver.find_element(By.CSS_SELECTOR, ".job .state").text == "failed"


def test_phone_size_and_keyboard(browser, embedded_service: Service) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver = browser
    driver.set_window_size(390, 844)
    try:
        open_page(driver, embedded_service)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0  # nothing wider than a phone's screen
        for control in ("files", "task", "variant", "format"):
            label = driver.find_element(By.CSS_SELECTOR, f"label[for='{control}']")
            assert label.text.strip()
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        driver.execute_script("document.getElementById('files').focus()")
        ActionChains(driver).send_keys(Keys.TAB).perform()  # keyboard focus moves on to the task
        focused = driver.switch_to.active_element
        assert focused.get_attribute("id") == "task"
        assert focused.value_of_css_property("outline-style") == "solid"
    finally:
        driver.set_window_size(1100, 900)


def test_the_page_and_docs_need_no_other_host(service: Service) -> None:
    with service.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="(/[^"]+)"', page.text)
        assert "/static/app.js" in assets and "/static/app.css" in assets
        for asset in ["/", *assets]:
            body = c.get(asset)
            assert body.status_code == 200, asset
            assert not re.search(r"(?:src|href)=\"https?://|url\(https?://|import .* from \"https?://",
                                 body.text), asset
        for docs in ("/docs", "/redoc"):
            html = c.get(docs).text
            refs = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
            assert refs and not [r for r in refs if re.match(r"https?://", r)], refs
            for ref in refs:
                assert c.get(ref).status_code == 200, ref


def test_the_page_asks_for_a_key_and_sends_it(browser, tiny_weights: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With API keys on, a refused restore shows the key field; with the key typed in, the same page
    restores, follows the job's events and downloads the result (each request carries X-API-Key)."""
    import hashlib
    from types import SimpleNamespace

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from tests.test_service_store import serve_in_thread
    from workers.settings import Settings

    key = "bbcu_page-test-key"
    settings = Settings(weights_dir=tiny_weights, torch_threads=1,
                        api_keys="page=sha256:" + hashlib.sha256(key.encode()).hexdigest())
    photo = _photo(tmp_path / "photo.png")
    driver = browser
    with serve_in_thread(settings) as url:
        wait = open_page(driver, SimpleNamespace(url=url))  # /models needs no key: the form fills
        assert not driver.find_element(By.ID, "key-field").is_displayed()
        choose(driver, "task", "denoise")
        driver.find_element(By.ID, "files").send_keys(str(photo))
        driver.find_element(By.ID, "start").click()
        problem = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".job .problem")))
        assert problem.text.startswith("Unauthorized: this service requires an API key")
        assert driver.find_element(By.ID, "key-field").is_displayed()
        driver.find_element(By.ID, "api-key").send_keys(key)
        driver.find_element(By.ID, "start").click()  # the same file, chosen before
        wait.until(lambda d: {e.text for e in d.find_elements(By.CSS_SELECTOR, ".job .state")} >= {"done"}
                   or [p.text for p in d.find_elements(By.CSS_SELECTOR, ".job .problem") if p.text][1:])
        states = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".job .state")]
        problems = [p.text for p in driver.find_elements(By.CSS_SELECTOR, ".job .problem") if p.text]
        assert sorted(states) == ["done", "failed"], problems
        [link] = [e for e in driver.find_elements(By.CSS_SELECTOR, ".job .download") if e.is_displayed()]
        assert link.get_attribute("download") == "photo-denoise.png"
