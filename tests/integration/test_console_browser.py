"""The web console in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against a
real deployment: API process, Celery worker, Redis. A person's path from a zip of images to a prediction,
with screenshots under test-artifacts/ui/ and no errors in the browser console."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.sample_data import iter_labelled_pngs
from tests.helpers import auth, wait_for_job, zip_bytes
from tests.integration.conftest import ROOT, Deployment

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module", autouse=True)
def fresh_artifacts() -> None:
    """Screenshots of this run only."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)


@pytest.fixture
def browser(deployment: Deployment, request: pytest.FixtureRequest) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install chromium chromium-driver (make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser plus what a test needs around it: waiting on conditions, screenshots, console logs."""

    def __init__(self, driver: Any, dep: Deployment, shots: Path) -> None:
        self.driver, self.dep, self.shots = driver, dep, shots
        self.shots.mkdir(parents=True, exist_ok=True)
        self.console: list[dict[str, Any]] = []

    def open(self, fragment: str = "") -> None:
        self.driver.get(f"{self.dep.base_url}/ui/{fragment}")

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        def check(_: Any) -> Any:
            try:
                return condition()
            except StaleElementReferenceException:
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(check)
        except WebDriverException as exc:
            self.shot(f"failed-{what.replace(' ', '-')[:40]}")
            raise AssertionError(f"timed out waiting for {what}\n{self.dep.dump_logs()}") from exc

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def drain_console(self) -> list[dict[str, Any]]:
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def severe(self) -> list[dict[str, Any]]:
        return [e for e in self.drain_console() if e["level"] == "SEVERE"]

    def drop_files(self, zone_css: str, files: dict[str, bytes], mime: str = "image/png") -> None:
        """Drop files on an element the way a person drags them from a file manager."""
        payload = [{"name": n, "b64": base64.b64encode(b).decode()} for n, b in files.items()]
        self.driver.execute_script(
            """
            const [css, files, mime] = arguments;
            const dt = new DataTransfer();
            for (const f of files) {
              const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
              dt.items.add(new File([bytes], f.name, { type: mime }));
            }
            const zone = document.querySelector(css);
            for (const type of ["dragover", "drop"]) {
              zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
            }
            """,
            zone_css,
            payload,
            mime,
        )


def _dataset_zip(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Real digit images, 12 per class, plus two files the ingestion must reject with a reason."""
    entries = {f"digits/{label}/{name}": data for name, label, data in iter_labelled_pngs("digits", 12)}
    entries["digits/3/notes.png"] = b"<html>not an image</html>"
    entries["digits/7/empty.png"] = b""
    path = tmp_path / "digits.zip"
    path.write_bytes(zip_bytes(entries))
    return path, entries


def _probe_files() -> dict[str, bytes]:
    """Held-out digit images (another seed) to try predictions on."""
    picked = {}
    for _name, label, data in iter_labelled_pngs("digits", 1, seed=99):
        if label in ("0", "5"):
            picked[f"probe-{label}.png"] = data
    return picked


def test_from_a_zip_to_a_prediction_in_the_browser(
    browser: Any, deployment: Deployment, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from selenium.webdriver.support.ui import Select

    db = request.node.callspec.params.get("deployment", "sqlite")
    page = Page(browser, deployment, ARTIFACTS / db)

    # sign in: a wrong key is refused with a message, the right one opens the datasets page
    page.open()
    page.until(lambda: page.find("#api-key").is_displayed(), "the sign-in form")
    assert page.find("label[for=api-key]").text.startswith("API key")
    page.shot("01-sign-in")
    page.find("#api-key").send_keys("tls_000000000000_not-a-real-key")
    page.find("#sign-in").click()
    page.until(lambda: "not accepted" in page.find("#signin-error").text, "the refusal of a wrong key")
    refused = page.drain_console()  # the browser logs the 401 itself; nothing else may be there
    assert all("401" in e["message"] for e in refused if e["level"] == "SEVERE"), refused
    page.find("#api-key").clear()
    page.find("#api-key").send_keys(deployment.api_key)
    page.find("#sign-in").click()
    page.until(lambda: page.find("#upload-form").is_displayed(), "the datasets page after signing in")
    assert browser.execute_script("return sessionStorage.getItem('tlserve.apiKey')") == deployment.api_key
    assert browser.execute_script("return localStorage.length") == 0

    # upload a zip with the file picker; the page follows the ingestion job and then shows the dataset
    archive, entries = _dataset_zip(tmp_path)
    page.find("#dataset-file").send_keys(str(archive))
    page.until(lambda: "digits.zip" in page.find("#chosen-file").text, "the chosen file's name")
    name = page.find("#dataset-name")
    name.clear()
    name.send_keys("digits from the browser")
    page.find("#upload-button").click()
    page.until(lambda: "#/datasets/ds_" in browser.current_url, "the new dataset's page")
    dataset_id = browser.current_url.rsplit("/", 1)[-1]
    page.until(lambda: page.find_all("#dataset-stats"), "the ingestion job to finish", timeout=180)
    with deployment.client() as api:
        ds = api.get(f"/v1/datasets/{dataset_id}", headers=auth(deployment.api_key)).json()
    assert ds["status"] == "ready" and ds["num_images"] == 120
    counts = {
        r.get_attribute("data-label"): r.find_elements("css selector", "td")[1].text
        for r in page.find_all("#class-counts tbody tr")
    }
    assert counts == {str(d): "12" for d in range(10)}
    rejected = page.find("#rejected-table").text
    assert "digits/3/notes.png" in rejected and "digits/7/empty.png" in rejected
    assert "image" in rejected.lower()  # each reason says what was wrong with the file
    page.shot("02-dataset")

    # the thumbnail grid: every thumbnail decoded from a blob URL (the key never goes into a URL)
    def thumbs_loaded() -> bool:
        imgs = page.find_all("#thumbnails img")
        return len(imgs) == 48 and all(
            (i.get_attribute("src") or "").startswith("blob:")
            and browser.execute_script("return arguments[0].naturalWidth", i) > 0
            for i in imgs
        )

    page.until(thumbs_loaded, "48 thumbnails")
    assert page.find("#more-images").is_displayed()  # 120 images: the Link header says there is more
    page.find("#more-images").click()
    page.until(lambda: len(page.find_all("#thumbnails img")) == 96, "the second page of thumbnails")
    page.shot("03-thumbnails")

    # train a linear probe from the dataset page, watch its job over SSE, open the model
    Select(page.find("#train-backbone")).select_by_value("efficientnet_lite0")
    Select(page.find("#train-strategy")).select_by_value("linear_probe")
    page.find("#train-button").click()
    page.until(lambda: "#/jobs/job_" in browser.current_url, "the training job's page")
    job_id = browser.current_url.rsplit("/", 1)[-1]
    seen_running = page.until(lambda: page.find(".job-panel").get_attribute("data-status"), "the job's first event")
    page.until(
        lambda: page.find(".job-panel").get_attribute("data-status") == "succeeded", "the training job", timeout=300
    )
    assert seen_running in ("queued", "running", "succeeded")
    assert page.find(".progress > div").get_attribute("style").replace(" ", "").startswith("width:100")
    page.shot("04-job-succeeded")
    page.find("#job-resource").click()
    page.until(lambda: page.find_all("#confusion-heatmap"), "the model page's heat map")
    model_id = browser.current_url.rsplit("/", 1)[-1]
    with deployment.client() as api:
        model = api.get(f"/v1/models/{model_id}", headers=auth(deployment.api_key)).json()
    metrics = model["metrics"]
    cells = page.find_all("#confusion-heatmap g.cell")
    assert len(cells) == len(metrics["labels"]) ** 2 == 100
    drawn = {
        (c.get_attribute("data-true"), c.get_attribute("data-pred")): int(c.get_attribute("data-count")) for c in cells
    }
    for i, true in enumerate(metrics["labels"]):
        for j, pred in enumerate(metrics["labels"]):
            assert drawn[(true, pred)] == metrics["confusion_matrix"][i][j]
    # the shade is the cell's share of its row: white for none, the darkest blue for the whole row
    for c in cells:
        i = metrics["labels"].index(c.get_attribute("data-true"))
        share = int(c.get_attribute("data-count")) / max(1, sum(metrics["confusion_matrix"][i]))
        fill = c.find_element("css selector", "rect").get_attribute("fill")
        if share == 0:
            assert fill == "rgb(247,251,255)"
        elif share == 1:
            assert fill == "rgb(8,48,107)"
    assert page.find("#model-accuracy .v").text == f"{100 * metrics['accuracy']:.1f}%"
    assert page.find("#model-macro-f1 .v").text == f"{metrics['macro_f1']:.3f}"
    assert len(page.find_all("#per-class tbody tr")) == 10
    page.shot("05-model")

    # try a prediction: drop two images and a broken file on the drop zone
    probes = _probe_files()
    page.drop_files("#try-prediction .dropzone", {**probes, "broken.png": b"not a png at all"})
    page.until(
        lambda: len(page.find_all("#predictions .prediction[data-label], #predictions .prediction[data-error]")) == 3,
        "three results",
    )
    shown = {r.get_attribute("data-file"): r for r in page.find_all("#predictions .prediction")}
    assert set(shown) == {*probes, "broken.png"}
    with deployment.client() as api:
        files = [("files", (n, b, "image/png")) for n, b in probes.items()]
        expected = api.post(
            f"/v1/models/{model_id}/predict", files=files, data={"top_k": "5"}, headers=auth(deployment.api_key)
        ).json()
    for row in expected["predictions"]:
        el = shown[row["file"]]
        assert el.get_attribute("data-label") == row["label"]
        assert el.find_element("css selector", ".predicted-label").text == row["label"]
        assert len(el.find_elements("css selector", ".bar.score")) == 5
        assert el.find_element("css selector", ".file").text == row["file"]
    assert shown["broken.png"].get_attribute("data-error") == "1"
    page.shot("06-prediction")

    # publish the model under an alias, then find it in the models list; a bad name is refused before sending
    page.find("#alias-name").send_keys("Bad Name!")
    page.find("#alias-button").click()
    assert browser.execute_script("return document.querySelector('#alias-name').validity.patternMismatch")
    page.find("#alias-name").clear()
    page.find("#alias-name").send_keys("digits-prod")
    page.find("#alias-button").click()
    page.until(lambda: page.find_all("#model-aliases .alias"), "the published alias")
    assert page.find("#model-aliases .alias").text == "digits-prod"
    with deployment.client() as api:
        alias = api.get("/v1/aliases/digits-prod", headers=auth(deployment.api_key)).json()
    assert alias["model_id"] == model_id

    # export: the page fetches the whole ONNX graph with the key and offers it as a file
    page.find("#export-button").click()
    page.until(lambda: page.find_all("#export-link"), "the exported graph", timeout=180)
    with deployment.client() as api:
        graph = api.get(f"/v1/models/{model_id}/export", headers=auth(deployment.api_key), timeout=180).content
    assert int(page.find("#export-link").get_attribute("data-bytes")) == len(graph)
    assert page.find("#export-link").get_attribute("download") == f"{model_id}.onnx"
    browser.get(f"{deployment.base_url}/ui/#/models")
    page.until(lambda: page.find_all("#aliases-table tr[data-alias='digits-prod']"), "the alias in the models list")
    assert page.find("#aliases-table tr[data-alias='digits-prod']").get_attribute("data-model") == model_id
    page.shot("07-aliases")

    # the key was only ever sent in a header: no URL the page fetched carries it
    urls = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert urls and not [u for u in urls if deployment.api_key in u]
    assert f"{deployment.base_url}/v1/jobs/{job_id}/events" in urls  # progress came over the event stream

    # the datasets list now has the upload
    browser.get(f"{deployment.base_url}/ui/#/datasets")
    page.until(lambda: page.find_all(f"#datasets-table tr[data-id='{dataset_id}']"), "the dataset in the list")
    assert "digits from the browser" in page.find(f"#datasets-table tr[data-id='{dataset_id}']").text

    # the dataset page, now that the probe cached features: leakage, and an image's nearest images
    browser.get(f"{deployment.base_url}/ui/#/datasets/{dataset_id}")
    page.until(lambda: page.find_all("#leaks"), "the leakage report")
    feature_set_id = model["params"]["fit"]["feature_set_id"]
    with deployment.client() as api:
        leaks = api.get(f"/v1/features/{feature_set_id}/near-duplicates", headers=auth(deployment.api_key)).json()
    assert int(page.find("#leaks").get_attribute("data-count")) == len(leaks["pairs"])
    page.until(lambda: page.find_all("#thumbnails figure.pickable"), "pickable thumbnails")
    picked = page.find("#thumbnails figure.pickable")
    picked_id = picked.get_attribute("data-image-id")
    picked.click()
    page.until(lambda: len(page.find_all("#similar .thumb")) == 8, "eight similar images")
    with deployment.client() as api:
        found = api.post(
            f"/v1/features/{feature_set_id}/search",
            data={"image_id": picked_id, "k": "8"},
            headers=auth(deployment.api_key),
        ).json()["results"][0]["neighbours"]
    shown = [el.get_attribute("data-image-id") for el in page.find_all("#similar .thumb")]
    assert shown == [n["image_id"] for n in found] and picked_id not in shown
    page.until(lambda: all(i.get_attribute("src") for i in page.find_all("#similar .thumb img")), "their thumbnails")
    page.shot("08-similar-images")
    assert page.severe() == []


def test_finetune_curves_compare_leaderboard_and_cancel_in_the_browser(
    browser: Any, deployment: Deployment, request: pytest.FixtureRequest
) -> None:
    db = request.node.callspec.params.get("deployment", "sqlite")
    page = Page(browser, deployment, ARTIFACTS / db)
    key = deployment.api_key
    with deployment.client() as api:
        archive = zip_bytes({f"{label}/{name}": data for name, label, data in iter_labelled_pngs("digits", 8)})
        created = api.post(
            "/v1/datasets", headers=auth(key), data={"name": "digits-ft"}, files={"archive": ("d.zip", archive)}
        ).json()
        assert wait_for_job(api, created["job_id"], key)["status"] == "succeeded"
        body = {
            "dataset_id": created["id"],
            "backbone": "efficientnet_lite0",
            "strategy": "finetune",
            "finetune": {"epochs": 3},
        }
        ft = api.post("/v1/models", headers=auth(key), json=body).json()
        assert wait_for_job(api, ft["job_id"], key, timeout=300)["status"] == "succeeded"
        cmp = api.post(
            "/v1/compare",
            headers=auth(key),
            json={"dataset_id": created["id"], "backbones": ["efficientnet_lite0", "efficientnet_lite1"]},
        ).json()
        assert wait_for_job(api, cmp["job_id"], key, timeout=300)["status"] == "succeeded"
        slow = api.post("/v1/models", headers=auth(key), json={**body, "finetune": {"epochs": 200}}).json()

    page.open()
    page.find("#api-key").send_keys(key)
    page.find("#sign-in").click()
    page.until(lambda: page.find_all("#upload-form"), "the datasets page")

    # a fine-tuned model's page draws its per-epoch loss and accuracy
    browser.get(f"{deployment.base_url}/ui/#/models/{ft['id']}")
    page.until(lambda: page.find_all("#loss-curve polyline.series"), "the training curves")
    series = {
        p.get_attribute("data-name"): p.get_attribute("points").split()
        for p in page.find_all("#training-curves polyline.series")
    }
    assert len(series["train loss"]) == 3 and len(series["val loss"]) == 3
    assert len(series["train accuracy"]) == 3
    page.find("#training-curves").location_once_scrolled_into_view  # noqa: B018 (scrolls the curves into the shot)
    page.shot("07-finetune-curves")

    # the comparison's leaderboard as a bar chart, best first
    browser.get(f"{deployment.base_url}/ui/#/models")
    page.until(lambda: page.find_all("#leaderboard-chart rect.bar"), "the leaderboard chart")
    bars = [b.get_attribute("data-name") for b in page.find_all("#leaderboard-chart rect.bar")]
    with deployment.client() as api:
        board = api.get(f"/v1/jobs/{cmp['job_id']}", headers=auth(key)).json()["metrics"]["leaderboard"]
    assert bars == [r["backbone"] for r in board]
    page.shot("08-models-leaderboard")

    # cancel a long fine-tune from its job page; the page shows it cancelled
    browser.get(f"{deployment.base_url}/ui/#/jobs/{slow['job_id']}")
    page.until(lambda: page.find("#cancel-job").is_displayed(), "the cancel button")
    page.find("#cancel-job").click()
    page.until(
        lambda: page.find(".job-panel").get_attribute("data-status") == "cancelled", "the cancelled job", timeout=180
    )
    assert not page.find("#cancel-job").is_displayed()
    page.shot("09-job-cancelled")
    with deployment.client() as api:
        assert api.get(f"/v1/jobs/{slow['job_id']}", headers=auth(key)).json()["status"] == "cancelled"
    assert page.severe() == []


def test_label_next_in_the_browser(browser: Any, deployment: Deployment, request: pytest.FixtureRequest) -> None:
    """A probe's page ranks the dataset's unlabelled images; labels typed there make a new version."""
    from selenium.webdriver.support.ui import Select

    db = request.node.callspec.params.get("deployment", "sqlite")
    page = Page(browser, deployment, ARTIFACTS / db / "label-next")
    pngs = list(iter_labelled_pngs("digits", 10, seed=3))
    entries = {f"d/{lb}/{n}": d for n, lb, d in pngs if lb in {"0", "1", "2"}}
    entries |= {f"d/_unlabelled/{n}": d for n, lb, d in pngs if lb in {"3", "4"}}  # 20 images to label
    key = auth(deployment.api_key)
    with deployment.client() as api:
        resp = api.post(
            "/v1/datasets", headers=key, files={"archive": ("d.zip", zip_bytes(entries))}, data={"name": "pool"}
        )
        dataset_id = resp.json()["id"]
        assert wait_for_job(api, resp.json()["job_id"], deployment.api_key)["status"] == "succeeded"
        body = {"dataset_id": dataset_id, "backbone": "efficientnet_lite0", "head": {"C": 1.0}}
        resp = api.post("/v1/models", headers=key, json=body)
        model_id = resp.json()["id"]
        assert wait_for_job(api, resp.json()["job_id"], deployment.api_key)["status"] == "succeeded"

    page.open()
    page.until(lambda: page.find("#api-key").is_displayed(), "the sign-in form")
    page.find("#api-key").send_keys(deployment.api_key)
    page.find("#sign-in").click()
    page.until(lambda: page.find("#upload-form").is_displayed(), "the datasets page after signing in")
    page.open(f"#/datasets/{dataset_id}")
    page.until(lambda: page.find('#dataset-stats [data-stat="unlabelled"] .v').text == "20", "the unlabelled count")

    page.open(f"#/models/{model_id}")
    page.until(lambda: len(page.find_all("#suggestion-rows tr")) == 20, "20 suggestions")
    assert "20 of 20 unlabelled images" in page.find("#suggest-note").text
    Select(page.find("#suggest-strategy")).select_by_value("coreset")
    page.until(lambda: len(page.find_all("#suggestion-rows tr")) == 20, "the coreset ranking")
    rows = page.find_all("#suggestion-rows tr")
    truth = {}  # file → its real class (the sample files are named after it)
    for row in rows[:2]:
        file = row.find_element("css selector", "td").text
        truth[file] = file.rsplit("/", 1)[-1].split("_")[0]
        row.find_element("css selector", "input.new-label").send_keys(truth[file])
    page.shot("suggestions")
    page.find("#label-button").click()
    page.until(lambda: page.find_all("#label-done"), "the new version", timeout=120)
    with deployment.client() as api:
        ds = api.get(f"/v1/datasets/{dataset_id}", headers=key).json()
        images = api.get(f"/v1/datasets/{dataset_id}/images?split=train&limit=500", headers=key).json()
    assert ds["version"] == 2 and ds["unlabelled"] == 18
    assert ds["classes"].get("3", 0) + ds["classes"].get("4", 0) == 2
    assert {img["file"]: img["label"] for img in images if img["file"] in truth} == truth
    assert page.severe() == []
