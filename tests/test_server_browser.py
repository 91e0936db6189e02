"""The pages in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven
by Selenium): submit a query, wait for the heatmap, compare the top perturbagen with the
API's, search a compound and open its page. Screenshots go to ``tests/artifacts/``."""

from __future__ import annotations

import shutil

import pytest

httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests._server_helpers import (  # noqa: E402
    Server,
    artifacts_dir,
    planted_query,
    shared_store,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def server(data, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("browserjobs") / "jobs"
    srv = Server(data["store"], jobs, "--pcl", data["pcl"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,1800")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations show here
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _no_csp_violation(driver) -> None:
    """Nothing the pages load or run was blocked by the Content-Security-Policy."""
    blocked = [
        e["message"] for e in driver.get_log("browser") if "Content Security" in e["message"]
    ]
    assert not blocked, blocked


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(artifacts_dir() / f"browser_{name}.png"))


def _fill(driver, element_id: str, text: str) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));",
        element_id,
        text,
    )


def test_query_page_to_heatmap(server, browser, data):
    up, dn = planted_query(data["design"])
    browser.get(server.url + "/")
    _fill(browser, "up", "\n".join([*up, "NOTAGENE1"]))
    _fill(browser, "down", ", ".join(dn))
    wait = WebDriverWait(browser, 60)
    # the page says at once which genes are unknown
    wait.until(ec.text_to_be_present_in_element((By.ID, "check"), "NOTAGENE1"))
    assert "unknown" in browser.find_element(By.ID, "check").text
    _shot(browser, "query_page")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ec.url_contains("/jobs/"))
    job_id = browser.current_url.rsplit("/", 1)[1]
    WebDriverWait(browser, 240).until(
        lambda d: d.find_element(By.ID, "heatmap").get_attribute("data-ready") == "1"
    )
    wait.until(lambda d: d.find_element(By.ID, "top-pert").text.strip())
    assert browser.find_elements(By.CSS_SELECTOR, "#heatmap .main-svg")  # plotly drew it
    shown = browser.find_element(By.ID, "top-pert").text.strip()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        api = c.get(
            f"/api/v1/queries/{job_id}/results", params={"level": "pert_summary", "limit": 1}
        ).json()
        assert browser.find_element(By.ID, "status").text == "done"
    assert shown == api["items"][0]["id"]
    assert browser.find_element(By.ID, "heatmap").get_attribute("data-top") == shown
    # the detailed list sorts and filters
    wait.until(lambda d: d.find_element(By.ID, "detail").get_attribute("data-total"))
    total = int(browser.find_element(By.ID, "detail").get_attribute("data-total"))
    _fill(browser, "filter", "SYN001 agonist")
    wait.until(lambda d: d.find_element(By.ID, "detail").get_attribute("data-total") != str(total))
    rows = browser.find_elements(By.CSS_SELECTOR, "#detail tbody tr")
    assert 0 < len(rows) < total and all("SYN001 agonist" in r.text for r in rows)
    # clicking a column header sorts by it (twice: ascending)
    for _ in range(2):
        browser.find_element(By.CSS_SELECTOR, "#detail th[data-col='ncs']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail th.sorted"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail th.sorted.asc"))
    heads = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#detail th")]
    col = heads.index("ncs")
    ncs = [
        float(r.find_elements(By.TAG_NAME, "td")[col].text)
        for r in browser.find_elements(By.CSS_SELECTOR, "#detail tbody tr")
    ]
    assert ncs == sorted(ncs)
    assert browser.find_elements(By.CSS_SELECTOR, "#pcl td")
    _shot(browser, "result_page")
    _no_csp_violation(browser)  # the whole query ran under the server's CSP


def test_search_compound_and_open_its_page(server, browser):
    browser.get(server.url + "/search")
    box = browser.find_element(By.ID, "q")
    box.send_keys("SYN001 agonist")
    browser.find_element(By.ID, "go").click()
    wait = WebDriverWait(browser, 60)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#compounds a.compound")))
    first = browser.find_element(By.CSS_SELECTOR, "#compounds a.compound")
    pert = first.text
    _shot(browser, "search_page")
    first.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "pert-id"), pert))
    assert "SYN001 agonist" in browser.find_element(By.ID, "moa").text
    assert browser.find_elements(By.CSS_SELECTOR, "#connections td")
    _shot(browser, "compound_page")
    # a signature of it, with its neighbours and opposites
    browser.find_element(By.CSS_SELECTOR, "#signatures a").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#top td")))
    assert browser.find_elements(By.CSS_SELECTOR, "#bottom td")
    _shot(browser, "signature_page")


def test_every_gene_accounted_for(server, browser, data):
    from cmapdask import open_store

    ds = open_store(data["store"])
    up, dn = planted_query(data["design"], n=12)
    symbols = dict(zip(ds["gene"].values, ds["gene_symbol"].values, strict=True))
    lower = str(symbols[up[1]]).lower()  # a symbol in the wrong case still matches
    assert lower != str(symbols[up[1]])
    browser.get(server.url + "/")
    _fill(browser, "up", "\n".join([up[0], lower, *up[2:], "NOTAGENE1", up[0]]))
    _fill(browser, "down", " ".join(dn[:5]))
    wait = WebDriverWait(browser, 60)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#gene-table tbody tr")))
    rows = [
        (
            r.get_attribute("data-side"),
            r.get_attribute("data-given"),
            r.get_attribute("data-status"),
        )
        for r in browser.find_elements(By.CSS_SELECTOR, "#gene-table tbody tr")
    ]
    want = [("up", up[0], "in_space"), ("up", lower, "in_space")]
    want += [("up", g, "in_space") for g in up[2:]]
    want += [("up", "NOTAGENE1", "unknown"), ("up", up[0], "duplicate")]
    want += [("down", g, "in_space") for g in dn[:5]]
    assert rows == want
    cells = browser.find_elements(By.CSS_SELECTOR, "#gene-table tbody tr")[1].text
    assert up[1] in cells and "in landmark" in cells  # matched as the gene's id
    # counts are of the genes that will be scored; 5 down genes are refused by default
    assert browser.find_element(By.ID, "up-count").text == f"(12 of {len(up) + 2})"
    assert "5 genes; CLUE's queries use 10-150" in browser.find_element(By.ID, "check").text
    browser.find_element(By.ID, "name").clear()
    browser.find_element(By.ID, "name").send_keys("my query 1")
    browser.find_element(By.ID, "submit").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "CLUE's queries use 10-150"))
    assert "allow_any_size" in browser.find_element(By.ID, "error").text
    _shot(browser, "gene_table")
    browser.find_element(By.ID, "any-size").click()  # the explicit override
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ec.url_contains("/jobs/"))
    job_id = browser.current_url.rsplit("/", 1)[1]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        job = c.get(f"/api/v1/queries/{job_id}").json()
    assert job["queries"] == ["my query 1"]  # a name with spaces
    assert job["genes"][0]["n_up"] == 12 and job["genes"][0]["n_down"] == 5


@pytest.fixture(scope="module")
def guarded(data, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("guardedjobs") / "jobs"
    srv = Server(data["store"], jobs, env={"CMAPDASK_TOKEN": "browser-t0ken"})
    yield srv
    srv.stop()


def test_login_page_and_offline_docs(guarded, browser):
    browser.get(guarded.url + "/search?q=SYN")
    wait = WebDriverWait(browser, 60)
    wait.until(ec.url_contains("/login"))
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "not the server"))
    browser.find_element(By.ID, "token").send_keys("browser-t0ken")
    browser.find_element(By.ID, "login").click()
    wait.until(ec.url_to_be(guarded.url + "/search?q=SYN"))
    assert browser.find_elements(By.CSS_SELECTOR, "#compounds a.compound")
    # Swagger UI from the package, under the CSP, reading the schema with the cookie
    browser.get(guarded.url + "/docs")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .opblock")))
    assert "cmapdask" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    _shot(browser, "docs")
    # an unknown address is a page with a way back
    browser.get(guarded.url + "/no/such/page")
    assert "no page at this address" in browser.find_element(By.ID, "detail").text
    browser.find_element(By.ID, "home").click()
    wait.until(ec.presence_of_element_located((By.ID, "up")))
    _no_csp_violation(browser)


def test_query_page_scored_set(server, browser, data):
    """The Query page's Scored box: the job scores only that set; a bad filter is one
    line under the form and no job."""
    from cmapdask import open_store

    n_ts = int((open_store(data["store"])["is_touchstone"].values == 1).sum())
    up, dn = planted_query(data["design"], moa=2)
    browser.get(server.url + "/")
    _fill(browser, "up", "\n".join(up))
    _fill(browser, "down", "\n".join(dn))
    _fill(browser, "scored", "tas >")
    browser.find_element(By.ID, "submit").click()
    wait = WebDriverWait(browser, 60)
    wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "scored"))
    assert "/jobs/" not in browser.current_url
    assert len(browser.find_element(By.ID, "error").text.splitlines()) == 1
    _fill(browser, "scored", "is_touchstone == 1")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ec.url_contains("/jobs/"))
    job_id = browser.current_url.rsplit("/", 1)[1]
    WebDriverWait(browser, 240).until(lambda d: d.find_element(By.ID, "status").text == "done")
    with httpx.Client(base_url=server.url, timeout=60) as c:
        page = c.get(
            f"/api/v1/queries/{job_id}/results", params={"level": "sig", "limit": 500}
        ).json()
    assert page["total"] == n_ts and all(r["is_touchstone"] == 1 for r in page["items"])
    _shot(browser, "query_scored")
