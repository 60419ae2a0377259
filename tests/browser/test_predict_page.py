"""The prediction page in headless Chromium: fill, submit, read the answer; validation; KServe down."""

from __future__ import annotations

import re

import pytest

from pipeline.settings import Settings
from tests.webapp.conftest import closed_port_url
from webapp import create_app

from .conftest import serve

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def _fill(page, *, name, sex, age, pclass, sibsp, parch, fare, port, cabin, ticket=""):
    page.fill("#Name", name)
    page.check(f"input[name=Sex][value={sex}]", force=True)  # the radio is visually hidden behind its label
    page.fill("#Age", age)
    page.check(f"input[name=Pclass][value='{pclass}']", force=True)
    page.fill("#SibSp", sibsp)
    page.fill("#Parch", parch)
    page.fill("#Fare", fare)
    page.select_option("#Embarked", port)
    page.fill("#Cabin", cabin)
    page.fill("#Ticket", ticket)


@pytest.fixture
def live_url(model_server):
    # The trained model's own deployment: its registry and S3 folder feed the model page.
    settings = model_server.settings.model_copy(update={"kserve_url": model_server.transformer_url})
    url, stop = serve(create_app({"SETTINGS": settings}))
    yield url
    stop()


@pytest.mark.integration
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_fill_submit_and_read_the_prediction(browser, live_url, model_server, output_dir, viewport):
    page = browser.new_page(viewport=viewport)
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(live_url)
    assert page.title().startswith("Predict")
    _fill(page, name="Allen, Miss. Elisabeth Walton", sex="female", age="29", pclass=1, sibsp="0", parch="0",
          fare="211.3375", port="S", cabin="B5", ticket="24160")
    page.click("#predict-button")
    page.wait_for_selector("#result")
    label = page.inner_text("#result-label")
    assert label in ("Survived", "Did not survive")
    probability = float(page.inner_text("#result-probability").rstrip("%"))
    assert 0 <= probability <= 100
    assert (label == "Survived") == (page.get_attribute("#result", "data-survived") == "1")
    assert page.inner_text("#result-version") == model_server.model_version
    # Why: the five factors that moved it most, in words and signed points (KServe :explain), largest first.
    factors = page.locator("#factors [data-factor]")
    assert factors.count() == 5
    points = [abs(float(factors.nth(i).get_attribute("data-points"))) for i in range(5)]
    assert points == sorted(points, reverse=True)
    assert "female" in page.inner_text("#factors") and re.search(r"[+−]\d+ points", page.inner_text("#factors"))
    # The form keeps what was entered, and the gauge is as wide as the probability.
    assert page.input_value("#Name") == "Allen, Miss. Elisabeth Walton" and page.input_value("#Ticket") == "24160"
    gauge = page.locator("[role=meter]")
    assert float(gauge.get_attribute("aria-valuenow")) == pytest.approx(probability, abs=0.05)
    # Styled by the compiled Tailwind file (not the browser's defaults), with nothing fetched elsewhere.
    assert page.eval_on_selector("#predict-button", "b => getComputedStyle(b).backgroundColor") != "rgba(0, 0, 0, 0)"
    assert failed == []
    page.screenshot(path=str(output_dir / "prediction.png"), full_page=True)

    page.fill("#Age", "150")
    page.fill("#Name", "")
    page.click("#predict-button")
    page.wait_for_selector("[data-error-for=Age]")
    assert page.inner_text("[data-error-for=Age]") == "Age must be between 0 and 100, got '150'"
    assert page.inner_text("[data-error-for=Name]") == "Name is required"
    assert page.get_attribute("#Age", "aria-invalid") == "true"
    assert page.query_selector("#result") is None
    page.screenshot(path=str(output_dir / "validation.png"), full_page=True)

    page.click("nav >> text=Model")
    page.wait_for_selector("#production-version")
    assert page.inner_text("#production-version") == model_server.model_version
    page.wait_for_load_state("networkidle")
    widths = page.eval_on_selector_all("figure img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 3 and all(w > 100 for w in widths), widths  # the three PNGs from S3 rendered
    page.screenshot(path=str(output_dir / "model.png"), full_page=True)
    page.close()


def test_kserve_down_shows_a_clear_message(browser, output_dir):
    url, stop = serve(create_app({"SETTINGS": Settings(kserve_url=closed_port_url())}))
    try:
        page = browser.new_page(viewport=DESKTOP)
        page.goto(url)
        page.click("#predict-button")  # the example passenger is valid as it stands
        page.wait_for_selector("#service-error")
        assert "cannot be reached" in page.inner_text("#service-error")
        assert page.input_value("#Name") != ""
        page.screenshot(path=str(output_dir / "kserve-down.png"), full_page=True)
        page.close()
    finally:
        stop()
