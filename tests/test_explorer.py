"""The explorer: its computations (galparam.explorer), the app driven by Streamlit's AppTest, the
console's checks, and the served app in Debian's headless chromium."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import galparam
from galparam import explorer
from galparam.cli.common import run
from galparam.cli.explore import main as explore_main
from galparam.evaluate.crb import cramer_rao

APP = str(Path(galparam.__file__).with_name("explorer_app.py"))


def _app(monkeypatch, runs=(), dataset=None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(explorer.RUNS_ENV, os.pathsep.join(str(r) for r in runs))
    monkeypatch.setenv(explorer.DATASET_ENV, str(dataset or ""))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    return at


def _images(at) -> dict:
    """Caption → content hash of every image on the page."""
    found = {}

    def walk(node):
        for child in getattr(node, "children", {}).values():
            if getattr(child, "type", None) == "image":
                for img in child.proto.imgs:
                    found[img.caption] = img.url
            walk(child)

    walk(at._tree)
    return found


def test_a_point_is_drawn_with_its_noise_snr_and_bound():
    point = explorer.Point()  # the test-set galaxy at SNR 60
    view = explorer.draw(point)
    assert view.snr == pytest.approx(60, rel=0.02) and view.in_window
    np.testing.assert_allclose(point.theta, [1e5, 3.0, 0.3, -0.069, 0.15], atol=2e-3)
    reference = cramer_rao(point.theta, 0.5, 200.0).std
    np.testing.assert_allclose(view.bound.std, reference, rtol=0.01)
    again = explorer.draw(point)
    np.testing.assert_array_equal(view.noisy, again.noisy)  # the seed fixes the noise
    other = explorer.draw(explorer.Point(seed=1))
    assert not np.array_equal(view.noisy, other.noisy)
    assert np.std(view.noisy - view.noiseless) == pytest.approx(np.sqrt(200.0**2 + view.noiseless.mean()), rel=0.05)
    assert explorer.stretch(view.noisy, "log").min() == 0 and explorer.stretch(view.noisy).max() == 1


@pytest.mark.parametrize("key", list(explorer.SLIDERS))
def test_each_slider_changes_the_image_and_the_bound(monkeypatch, key):
    at = _app(monkeypatch)
    before, bound = _images(at), at.dataframe[0].value.copy()
    low, high, default, _ = explorer.SLIDERS[key]
    at.slider(key=key).set_value(round((default + high) / 2, 2)).run()
    after = _images(at)
    # σ changes the noise only; the flux scales the noiseless image (shown min to max) and so
    # changes the noisy one
    changed = "noisy" if key in ("sigma", "flux") else "noiseless"
    assert after[changed] != before[changed], key
    assert not np.allclose(at.dataframe[0].value.to_numpy(), bound.to_numpy()), key


def test_noise_switches_change_the_noisy_image_only(monkeypatch):
    at = _app(monkeypatch)
    before = _images(at)
    at.number_input(key="seed").set_value(5).run()
    seeded = _images(at)
    assert seeded["noisy"] != before["noisy"] and seeded["noiseless"] == before["noiseless"]
    at.checkbox(key="poisson").uncheck().run()
    assert _images(at)["noisy"] != seeded["noisy"]


def test_a_loaded_run_gives_estimates_and_the_fit_runs_on_request(monkeypatch, tiny_run):
    at = _app(monkeypatch, runs=[tiny_run])
    table = at.dataframe[2].value
    assert ("run", "estimate") in table.index and ("run", "error/bound") in table.index
    assert np.isfinite(table.loc[("run", "error/bound")].to_numpy()).all()
    at.button(key="fit").click().run()
    assert not at.exception
    assert any("Fit converged" in m.value for m in at.markdown)
    assert "residual (noisy - fitted model)" in _images(at)


def test_dataset_filters_change_the_table_and_a_run_predicts(monkeypatch, datasets, tiny_run):
    at = _app(monkeypatch, runs=[tiny_run], dataset=datasets["varying"])
    at.radio(key="page").set_value("Dataset").run()
    assert not at.exception
    everything = len(at.dataframe[0].value)
    assert everything == 200
    low, high = at.slider(key="filter_snr").value
    at.slider(key="filter_snr").set_value((low, (low + high) / 2)).run()
    filtered = at.dataframe[0].value
    assert 0 < len(filtered) < everything and filtered["snr"].max() <= (low + high) / 2
    predictions = at.dataframe[1].value
    assert len(predictions) == min(200, len(filtered)) and "hlr_err/crb" in predictions
    assert np.isfinite(predictions["hlr_err/crb"]).all()


def test_a_bad_run_or_dataset_shows_an_error_on_the_page(monkeypatch, tmp_path):
    at = _app(monkeypatch, runs=[tmp_path / "nowhere"])
    assert any("Cannot load the runs" in e.value for e in at.error)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    at = _app(monkeypatch, dataset=bad)
    at.radio(key="page").set_value("Dataset").run()
    assert not at.exception and any("Cannot load" in e.value and "bad.npz" in e.value for e in at.error)


def test_console_refuses_bad_input_in_one_line(tmp_path, capsys, datasets):
    for args, words in [
        (["--runs", str(tmp_path / "nowhere")], "nowhere"),
        (["--dataset", str(tmp_path / "missing.npz")], "no such file"),
        (["--port", "70000"], "--port 70000 is outside 1..65535"),
    ]:
        assert run(explore_main, args, prog="galparam-explore") == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(explore_main, ["--port", str(port)], prog="galparam-explore") == 2
        err = capsys.readouterr().err
        assert f"port {port} on 127.0.0.1 cannot be served" in err and "give another with --port" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_served_app_in_headless_chromium(datasets, tmp_path):
    driver_path = shutil.which("chromedriver")
    if not (shutil.which("chromium") and driver_path):
        pytest.fail("Debian's chromium and chromium-driver are needed (make test installs them: make system-packages)")
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "galparam.cli.explore", "--dataset", str(datasets["varying"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert f"http://127.0.0.1:{port}" in server.stdout.readline()
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            browser.get(f"http://127.0.0.1:{port}")
            # Streamlit redraws as it runs: an element found may be replaced before it is read
            wait = WebDriverWait(browser, 90, ignored_exceptions=(StaleElementReferenceException,))

            def snr_text(driver):
                for element in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']"):
                    if "SNR" in element.text:
                        return element.text
                return False

            first = wait.until(snr_text)
            assert "SNR = 59.9" in first, first
            radius = browser.find_element(By.CSS_SELECTOR, "input[type='range'][aria-label^='half-light radius']")
            browser.execute_script("arguments[0].focus()", radius)
            ActionChains(browser).send_keys(*[Keys.ARROW_RIGHT] * 10).perform()
            wait.until(lambda d: snr_text(d) and snr_text(d) != first)
            assert radius.get_attribute("value") == "0.4"
            shot = tmp_path / "explorer.png"
            browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
