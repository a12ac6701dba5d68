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
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the requests a page makes
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


def fetched(driver, href: str) -> bytes:  # type: ignore[no-untyped-def]
    """The bytes behind a link of the page (a blob: URL), as a download would save them."""
    encoded = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buf) => {
          let s = ""; new Uint8Array(buf).forEach((b) => { s += String.fromCharCode(b); }); done(btoa(s));
        });""", href)
    return base64.b64decode(encoded)


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
    downloaded = fetched(driver, link.get_attribute("href"))
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


def requested_urls(driver) -> set[str]:  # type: ignore[no-untyped-def]
    """Every URL the browser has asked for since the last call (Chrome's performance log)."""
    import json

    events = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return {e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"}


def test_chromium_asks_no_other_host_for_the_page_or_the_docs(browser, embedded_service: Service) -> None:  # type: ignore[no-untyped-def]
    """Loaded in Chromium (not only read as HTML): the page, Swagger UI and ReDoc, rendered, request
    nothing from another host (ReDoc's bundle wanted its logo from a CDN)."""
    from urllib.parse import urlsplit

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    own = urlsplit(embedded_service.url).netloc
    requested_urls(driver)  # what earlier tests left in the log
    rendered = {"/": "#task option", "/docs": ".swagger-ui .info .title", "/redoc": ".api-content h1"}
    for path, selector in rendered.items():
        driver.get(embedded_service.url + path)
        WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))
        driver.execute_async_script("setTimeout(arguments[arguments.length - 1], 500)")  # effects run
        urls = requested_urls(driver)
        assert embedded_service.url + path in urls
        elsewhere = {u for u in urls if urlsplit(u).scheme in ("http", "https") and urlsplit(u).netloc != own}
        assert not elsewhere, (path, elsewhere)


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


# every visible control of the form with the box of what holds it (its field, the drop zone, the form)
CONTROL_BOXES = """
    const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
    return [...document.querySelectorAll("#options select, #options input, #options button")]
      .filter((e) => e.getClientRects().length && getComputedStyle(e).visibility !== "hidden")
      .map((e) => [e.id || e.type, box(e), box(e.closest(".field, .drop, form"))]);"""


def assert_form_laid_out(driver, phone: bool) -> None:  # type: ignore[no-untyped-def]
    """No control overlaps another or leaves its field; selects keep their own height; on a phone the
    fields are one column, on a wide screen several share a row."""
    from selenium.webdriver.common.by import By

    boxes = driver.execute_script(CONTROL_BOXES)
    assert {"task", "format", "start"} <= {name for name, _, _ in boxes}
    for name, (left, top, right, bottom), (fl, ft, fr, fb) in boxes:
        assert fl - 0.5 <= left and right <= fr + 0.5 and ft - 0.5 <= top and bottom <= fb + 0.5, \
            (name, (left, top, right, bottom), (fl, ft, fr, fb))
    for i, (a, (al, at, ar, ab), _) in enumerate(boxes):
        for b, (bl, bt, br, bb), _ in boxes[i + 1:]:
            overlap = min(ar, br) - max(al, bl), min(ab, bb) - max(at, bt)
            assert overlap[0] <= 0.5 or overlap[1] <= 0.5, (a, b, overlap)
    for select in driver.find_elements(By.CSS_SELECTOR, "#options select"):
        if select.is_displayed():
            assert select.size["height"] < 48, (select.get_attribute("id"), select.size)
    lefts = {round(f.location["x"]) for f in driver.find_elements(By.CSS_SELECTOR, ".fields .field")
             if f.is_displayed()}
    assert (len(lefts) == 1) == phone, lefts


def _picture(path: Path, noise: float, fmt: str = "PNG") -> Path:
    """A smooth 48x40 picture, clean (noise 0: auto denoise leaves it as it is) or noisy."""
    import numpy as np

    y, x = np.mgrid[0:40, 0:48].astype(np.float32)
    base = np.stack([110 + 60 * np.sin(x / 11), 120 + 50 * np.cos(y / 9),
                     100 + 40 * np.sin((x + y) / 15)], -1)
    noisy = base + np.random.default_rng(5).normal(0, noise, base.shape) if noise else base
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, format=fmt)
    return path


@pytest.mark.parametrize("window", [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_cards_say_what_each_job_did(browser, embedded_service: Service, tmp_path: Path,  # type: ignore[no-untyped-def]
                                     window: tuple[int, int]) -> None:
    """At desktop and phone size: the layout with the longest task label and with Denoise; a TIFF's
    result shown and downloaded though the browser cannot show the TIFF; an auto denoise card with
    the measured noise and the strength, saying when it left the image unchanged; the newest card
    on screen right after Restore; the server's download name; clearing finished cards."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    service = embedded_service
    phone = window[0] < 600
    driver.set_window_size(*window)
    try:
        open_page(driver, service)
        options = driver.find_elements(By.CSS_SELECTOR, "#task option")
        labels = {o.get_attribute("value"): o.text for o in options}
        longest = max(labels, key=lambda v: len(labels[v]))
        assert labels[longest] == "JPEG deblock, then Super-resolution"
        for task in (longest, "denoise"):
            choose(driver, "task", task)
            assert_form_laid_out(driver, phone)

        def restore(path: Path, task: str, fmt: str = "png") -> object:
            """Restore one file; checks the newest card is on screen at once, returns it when finished."""
            cards = len(driver.find_elements(By.CSS_SELECTOR, ".job"))
            choose(driver, "task", task)
            choose(driver, "format", fmt)
            files = driver.find_element(By.ID, "files")
            driver.execute_script("arguments[0].value = ''", files)  # this file only, not the last one too
            files.send_keys(str(path))
            driver.find_element(By.ID, "start").click()
            WebDriverWait(driver, WAIT_S).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, ".job")) > cards)
            card = driver.find_element(By.CSS_SELECTOR, ".job")  # the newest is the first
            top, height = driver.execute_script(
                "return [arguments[0].getBoundingClientRect().top, window.innerHeight]", card)
            assert 0 <= top < height - 40, (top, height)  # its title and progress are in view
            WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "start").is_enabled())
            return card

        # a TIFF (Chromium displays no TIFF), clean: auto denoise measures little noise, changes nothing
        clean = _picture(tmp_path / "scan.tif", noise=0, fmt="TIFF")
        card = restore(clean, "denoise")
        assert card.find_element(By.CSS_SELECTOR, ".name").text == "scan.tif — Denoise"
        after = card.find_element(By.CSS_SELECTOR, "img.after")
        assert after.is_displayed() and driver.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", after) == [48, 40]
        assert not card.find_element(By.CSS_SELECTOR, "img.before").is_displayed()
        note = card.find_element(By.CSS_SELECTOR, ".note").text
        assert "The original is not shown: this browser cannot display TIF files." in note
        link = card.find_element(By.CSS_SELECTOR, ".download")
        assert link.is_displayed() and link.get_attribute("download") == "scan-denoise.png"
        with service.client() as c:
            direct = c.post("/restore", params={"task": "denoise", "format": "png"},
                            files={"image": ("scan.tif", clean.read_bytes(), "image/tiff")})
        assert fetched(driver, link.get_attribute("href")) == direct.content
        sigma, strength = direct.headers["x-noise-sigma"], float(direct.headers["x-strength"])
        assert strength == 0.0  # below the level auto denoise acts on
        stages = card.find_element(By.CSS_SELECTOR, ".stages").text
        assert "Denoise: tiny_denoise_l · " in stages and f"measured noise σ {sigma}" in stages
        assert "strength 0.00 (auto)" in stages
        assert card.find_element(By.CSS_SELECTOR, ".state").text == "done: unchanged"
        assert "Auto denoise left this image unchanged" in note
        # a noisy photo through a pipeline: each stage's model and time, the server's dash name
        noisy = _picture(tmp_path / "photo.png", noise=25)
        card = restore(noisy, "denoise,sr")
        title = card.find_element(By.CSS_SELECTOR, ".name").text
        assert title == "photo.png — Denoise, then Super-resolution ×4"
        assert card.find_element(By.CSS_SELECTOR, ".state").text == "done"
        lines = card.find_element(By.CSS_SELECTOR, ".stages").text.splitlines()
        assert lines[0].startswith("Denoise: tiny_denoise_l · ") and "measured noise σ " in lines[0]
        assert re.search(r"strength (0\.\d\d|1\.00) \(auto\)", lines[0]) and "strength 0.00" not in lines[0]
        assert re.match(r"Super-resolution: tiny_sr_x4_l · \d+ ms$", lines[1]), lines
        link = card.find_element(By.CSS_SELECTOR, ".download")
        assert link.get_attribute("download") == "photo-denoise-sr.png"  # the server's dash form
        # TIFF out: no preview, the download is there
        card = restore(noisy, "denoise", fmt="tiff")
        assert not card.find_element(By.CSS_SELECTOR, ".compare").is_displayed()
        note = card.find_element(By.CSS_SELECTOR, ".note").text
        assert "No preview: this browser cannot display TIFF files" in note
        link = card.find_element(By.CSS_SELECTOR, ".download")
        assert link.get_attribute("download") == "photo-denoise.tiff"
        assert fetched(driver, link.get_attribute("href"))[:4] in (b"II*\x00", b"MM\x00*")
        # clearing: every finished card goes
        assert len(driver.find_elements(By.CSS_SELECTOR, ".job")) == 3
        driver.find_element(By.ID, "clear").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".job") == []
        assert not driver.find_element(By.ID, "clear").is_displayed()
    finally:
        driver.set_window_size(1100, 900)
