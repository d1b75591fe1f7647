"""nncli explain --html: a self-contained page read back in headless Chromium; its numbers against
Captum called in the test; hostile column names escaped; written atomically."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import polars as pl
import pytest
import torch

from tests.test_explain import CLASSIFIER, captum, captum_permutation, module_for, predicted, run

pytest.importorskip("captum.attr")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTILE = ["<script>alert(1)</script>", 'a"b&c', "plain", "</td><b>x"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A 3-class model on 30 rows whose column names are markup, trained and saved."""
    d = tmp_path_factory.mktemp("html")
    g = np.random.default_rng(8)
    x = g.normal(size=(30, 4)).round(3)
    data, spec, weights = d / "h.csv", d / "h.yaml", d / "h.safetensors"
    pl.DataFrame({**{n: x[:, i] for i, n in enumerate(HOSTILE)}, "y": g.choice(["a", "b", "c"], 30)}).write_csv(data)
    spec.write_text(CLASSIFIER)
    run("train", spec, data, "-t", "y", "--epochs", 2, "--lr", 0.1, "--save-weights", weights, "-q")
    return x, spec, data, weights


def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def requests_made(driver) -> list:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(message["params"].get("request", {}).get("url") or message["params"].get("url"))
    return urls


def test_page_is_self_contained_and_escapes_column_names(hostile, tmp_path):
    _, spec, data, weights = hostile
    page = tmp_path / "e.html"
    run("explain", spec, data, "-w", weights, "--html", page, "-m", "saliency")
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"https?://|//[a-z]", text, re.I)  # nothing to fetch
    assert not re.search(r"<script|<link|<img|<iframe|url\(|@import", text, re.I)  # not even the column's <script>
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;/td&gt;&lt;b&gt;x" in text
    assert "Content-Security-Policy" in text


def test_page_in_a_headless_browser_holds_captums_numbers(hostile, tmp_path):
    """Chromium renders the page; the global bars (mean |attribution| over every row, ranked) and each
    row's signed attributions read back from the DOM equal Captum's integrated gradients computed here;
    the column names come back as written; nothing but the file is loaded."""
    from selenium.webdriver.common.by import By

    x, spec, data, weights = hostile
    page = tmp_path / "e.html"
    run("explain", spec, data, "-w", weights, "--dtype", "float64", "--html", page, "-b", 7)
    m, xt = module_for(weights, torch.float64), torch.tensor(x)
    base = torch.zeros(1, 4, dtype=torch.float64)
    parts = [captum("integrated-gradients", m, b, predicted(m, b), base) for b in xt.split(7)]  # nncli's batches
    a, delta = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    mean = np.abs(a).mean(axis=0)
    order = sorted(range(4), key=lambda k: -mean[k])
    driver = browser()
    try:
        driver.get(page.as_uri())
        bars = driver.find_elements(By.CSS_SELECTOR, "table.global tr.feature")
        assert [b.get_attribute("data-feature") for b in bars] == [HOSTILE[k] for k in order]
        assert [b.find_element(By.CSS_SELECTOR, "td.name").text for b in bars] == [HOSTILE[k] for k in order]
        # summed in float64 batch by batch (7 rows), then divided: numpy's mean adds in another order
        got = [float(b.get_attribute("data-mean-abs")) for b in bars]
        np.testing.assert_allclose(got, mean[order], rtol=1e-13)
        widths = [b.find_element(By.CSS_SELECTOR, "rect").size["width"] for b in bars]
        assert widths == sorted(widths, reverse=True) and widths[0] > 100  # drawn, longest first
        rows = driver.find_elements(By.CSS_SELECTOR, "section.row")
        assert [int(r.get_attribute("data-row")) for r in rows] == list(range(30))
        for r, section in enumerate(rows):
            assert float(section.get_attribute("data-delta")) == delta[r]
            cells = section.find_elements(By.CSS_SELECTOR, "tr.attribution")
            assert [c.get_attribute("data-feature") for c in cells] == HOSTILE
            assert [float(c.get_attribute("data-attribution")) for c in cells] == a[r].tolist()
            assert [float(c.get_attribute("data-value")) for c in cells] == x[r].tolist()
            for c, v in zip(cells, a[r]):  # the sign: a green bar right of the centre, a red one left
                rect = c.find_elements(By.CSS_SELECTOR, "rect")
                if v != 0:
                    assert rect[0].get_attribute("class") == ("pos" if v > 0 else "neg")
        assert requests_made(driver) == [page.as_uri()]
    finally:
        driver.quit()


def test_permutation_page_in_a_headless_browser(hostile, tmp_path):
    from selenium.webdriver.common.by import By

    x, spec, data, weights = hostile
    page = tmp_path / "p.html"
    args = ["-m", "permutation", "-t", "y", "--dtype", "float64", "--repeats", 3, "--seed", 4, "-f", "json"]
    doc = json.loads(run("explain", spec, data, "-w", weights, *args, "--html", page).stdout)
    m = module_for(weights, torch.float64)
    y = torch.tensor(["abc".index(c) for c in pl.read_csv(data)["y"]])
    mean, std = captum_permutation("accuracy", m, torch.tensor(x), y, repeats=3, seed=4)
    driver = browser()
    try:
        driver.get(page.as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.feature")
        assert [r.get_attribute("data-feature") for r in rows] == [f["feature"] for f in doc["features"]]
        for r in rows:
            k = HOSTILE.index(r.get_attribute("data-feature"))
            assert float(r.get_attribute("data-importance")) == mean[k]
            assert float(r.get_attribute("data-std")) == std[k]
        assert requests_made(driver) == [page.as_uri()]
    finally:
        driver.quit()


def test_a_failed_run_leaves_no_page(hostile, tmp_path):
    _, spec, data, weights = hostile
    page = tmp_path / "e.html"
    for args, code in ((["--class", "zebra"], 2), (["-m", "permutation", "-t", "y", "-b", 29], 1)):
        result = run("explain", spec, data, "-w", weights, "--html", page, *args, check=False)
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
        assert not page.exists()
    result = run("explain", spec, data, "-w", weights, "--html", data, check=False)  # an input: never overwritten
    assert result.returncode == 1 and "--force" in result.stderr
    assert run("explain", spec, data, "-w", weights, "--html", "-", check=False).stderr.startswith(
        "error: --html takes a file name"
    )
