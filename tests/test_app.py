"""python -m train_loop.app, used as a user would: start it on a tiny finished run, open the page
in a real headless browser (Debian's chromium + chromedriver, driven by selenium), and check
the WER table, a prediction row with its word differences, and a transcription of a test clip.
The page reads the run folder and never writes into it."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, free_port, train_args

from train_loop import main as train_main

pytest.importorskip("gradio", reason="pip install '.[app]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                   reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")


def _snapshot(folder):
    return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture
def app_on_a_run(tiny_model_dir, dataset_dir, tmp_path):
    out = tmp_path / "run"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "cache", max_steps=4,
                                      eval_steps=2, save_steps=2, eval_long_form="true", long_form_minutes=0.05,
                                      speech_bounds="file")) == 0
    before = _snapshot(out)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "train_loop.app", str(out), "--port", str(port),
                                "--compare", tiny_model_dir, "--generation_max_length", "8"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the app did not start: {process.communicate()[0][-3000:]}")
            time.sleep(0.3)
    started = time.monotonic() - (deadline - 60)
    yield url, out, dataset_dir, started
    process.terminate()
    process.wait(timeout=30)
    assert _snapshot(out) == before, "the app wrote into the run folder"


def _browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1500"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _wait_for(predicate, timeout=60):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (NoSuchElementException, StaleElementReferenceException):  # still rendering
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("the page did not show it in time")


def _tab(browser, name):
    from selenium.webdriver.common.by import By

    [tab for tab in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text == name][0].click()


@needs_browser
def test_the_page_shows_the_wer_table_the_errors_and_transcribes_a_clip(app_on_a_run, tmp_path):
    from selenium.webdriver.common.by import By

    url, run, data, started = app_on_a_run
    assert started < 30  # seconds from launch to a served page
    browser = _browser()
    try:
        browser.get(url)
        table = _wait_for(lambda: "validation" in browser.find_element(By.ID, "wer-table").text
                          and browser.find_element(By.ID, "wer-table").text)
        assert "test" in table and "WER %" in table
        assert "long-form (recordings)" in table and "timestamp error s" in table
        browser.save_screenshot(str(tmp_path / "run-tab.png"))

        _tab(browser, "Errors")
        clips = _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#clips tr.clip-row"))
        assert len(clips) == 4  # the test split's clips, each with reference and marked prediction
        assert clips[0].find_elements(By.CSS_SELECTOR, "del, ins")  # the word differences
        assert "test/test-" in clips[0].text
        browser.save_screenshot(str(tmp_path / "errors-tab.png"))

        _tab(browser, "Try it")
        upload = _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#try-audio input[type=file]"))
        upload[0].send_keys(str(data / "test" / "test-000.wav"))
        time.sleep(1)
        browser.find_element(By.ID, "transcribe").click()
        ours = _wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#run-transcript textarea").get_attribute("value"))
        theirs = browser.find_element(By.CSS_SELECTOR, "#compare-transcript textarea").get_attribute("value")
        assert str(run) in ours and " s, " in ours  # the run's model, with the time it took
        assert theirs and " s, " in theirs  # the --compare model beside it
        browser.save_screenshot(str(tmp_path / "try-tab.png"))
    finally:
        browser.quit()
    assert (tmp_path / "try-tab.png").stat().st_size > 10_000


def test_a_folder_that_is_not_a_run_is_named_with_what_is_missing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "train_loop.app", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "is not a training run's output folder: it has no metrics.jsonl, results.json or checkpoint-N" in result.stderr
