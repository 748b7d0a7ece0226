"""The search page at `/`, in a real browser: Playwright driving Debian's chromium against `semindex serve`.

No browser is ever downloaded: Playwright is pointed at the system's /usr/bin/chromium
(`apt-get install -y chromium`; .ci/run installs it). Screenshots of the main views are
saved under the module's temporary folder (printed with -s) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import semindex
from tests.api.serving import KEY, ServeProcess
from tests.support import sample_docs

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")

CHROMIUM = os.environ.get("SEMINDEX_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS_ID = "<img src=x onerror=window.__xss=1>"
XSS_TEXT = "<script>window.__xss = 2</script> a document about xss payloads in search results"
XSS_TITLE = "<b>bold title</b>"
XSS_META = {"html": "<img src=x onerror=window.__xss=3>", "topic": "<i>security</i>"}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {d}")
    return d


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The sample corpus plus a hostile document, served with an API key."""
    path = tmp_path_factory.mktemp("ui") / "store"
    with semindex.Store(path) as store:
        store.collection().add(
            sample_docs() + [{"id": XSS_ID, "title": XSS_TITLE, "text": XSS_TEXT, "metadata": XSS_META}]
        )
        store.collection("empty")
    srv = ServeProcess(path, "--api-key", KEY).wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"browser tests need chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A page plus what went wrong in it (console errors, CSP violations, dialogs, failed requests)."""

    def __init__(self, browser: Any, served: ServeProcess, *, width: int = 1280, height: int = 900) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))
        self.base = served.base

    def _console(self, msg: Any) -> None:
        # Answers of 4xx are logged by the browser as "Failed to load resource": the tests check what the
        # page shows for them instead. Anything else (a CSP violation, a script error) is a problem.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource: the server responded with a status of 4"):
            self.problems.append(f"console: {msg.text}")

    def open(self, key: str | None = KEY) -> Any:
        p = self.page
        p.goto(self.base + "/")
        if key is not None:
            p.fill("input[type=password]", key)
            p.press("input[type=password]", "Enter")  # 'change' fires: the collections load with the key
        return p

    def search(self, query: str, **fields: str) -> Any:
        p = self.page
        for selector, value in fields.items():
            if selector == "mode":
                p.select_option("#mode", value)
            else:
                p.fill(f"#{selector}", value)
        p.fill("input[type=search]", query)
        p.press("input[type=search]", "Enter")
        # (selectors, not wait_for_function: the page's CSP forbids the eval that one needs)
        p.wait_for_selector("#results[data-state=done], #results[data-state=error]", state="attached")
        return p

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, served: ServeProcess) -> Iterator[Page]:
    pg = Page(browser, served)
    yield pg
    pg.close()


def hit_ids(p: Any) -> list[str]:
    return [str(t) for t in p.locator("#results .hit .hit-id").all_text_contents()]


# -- the files and their headers --------------------------------------------------------------------


def test_page_files_headers_and_auth_is_not_weakened(served: ServeProcess) -> None:
    r = httpx.get(served.base + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script in the page"
    assert " style=" not in html and "<style" not in html, "inline style in the page"
    assert "http://" not in html and "https://" not in html, "the page loads nothing from elsewhere"
    assets = re.findall(r'(?:src|href)="(/ui/[^"]+)"', html)
    assert len(assets) == 2
    for url in assets:
        a = httpx.get(served.base + url)
        assert a.status_code == 200 and a.headers["cache-control"] == "public, max-age=31536000, immutable"
        again = httpx.get(served.base + url, headers={"if-none-match": a.headers["etag"]})
        assert again.status_code == 304
    assert httpx.get(served.base + "/ui/app.js").headers["cache-control"] == "no-cache"  # unversioned: revalidate
    assert httpx.get(served.base + "/", headers={"if-none-match": r.headers["etag"]}).status_code == 304
    # the page is public; the data is not
    for path in ("/collections", "/collections/default", "/ui/other.js", "/openapi.json", "/v1/models"):
        assert httpx.get(served.base + path).status_code == 401, path


# -- in the browser -------------------------------------------------------------------------------------


def test_search_hits_highlight_overview_and_key_in_session_storage(page: Page, shots: Path) -> None:
    p = page.open()
    p.wait_for_selector("#overview dd")
    overview = p.locator("#overview").inner_text()
    assert "41" in overview and "hash:384" in overview and "flat" in overview.lower()
    assert p.locator("#collection option").all_text_contents() == ["default", "empty"]

    page.search("how do black holes form")
    ids = hit_ids(p)
    assert len(ids) == 10 and ids[0] == "astro-black-holes"
    first = p.locator("#results .hit").first
    assert first.locator(".rank").inner_text() == "#1"
    float(first.locator(".score").inner_text())
    marks = [m.lower() for m in first.locator("mark").all_text_contents()]
    assert marks and set(marks) <= {"black", "holes", "form"} and "black" in marks
    assert "hits in" in p.locator("#status").inner_text()
    p.screenshot(path=str(shots / "desktop-results.png"), full_page=True)

    # the key lives in sessionStorage, never in the URL; it survives a reload of the tab
    assert p.evaluate("sessionStorage.getItem('semindex.apiKey')") == KEY
    assert KEY not in p.url
    p.reload()
    p.wait_for_selector("#overview dd")
    assert p.input_value("input[type=password]") == KEY

    # keyboard first: '/' focuses the query box from anywhere that is not a field
    p.locator("h1").click()
    p.keyboard.press("/")
    assert p.evaluate("document.activeElement.id") == "q"

    # mode and k reach the server
    page.search("bread", mode="keyword", k="3")
    ids = hit_ids(p)
    assert 1 <= len(ids) <= 3 and all("bread" in t.lower() for t in p.locator("#results .passage").all_text_contents())

    # open a document: its full text in a dialog
    p.locator("#results .hit .open").first.click()
    p.wait_for_selector("#doc-view[open]")
    assert p.locator("#doc-id").inner_text() == ids[0]
    p.screenshot(path=str(shots / "desktop-document.png"))
    p.click("#doc-close")
    assert page.problems == []


def test_filter_narrows_and_a_bad_filter_shows_the_servers_error(page: Page, served: ServeProcess,
                                                                  shots: Path) -> None:
    p = page.open()
    p.wait_for_selector("#overview dd")
    page.search("recipes", filter='{"topic": "cooking"}')
    assert hit_ids(p)
    for meta in p.locator("#results .hit .meta").all_inner_texts():
        assert "topic: cooking" in meta.splitlines()

    bad = {"topic": {"$regex": "cook"}}
    expected = httpx.post(served.base + "/collections/default/search", headers=AUTH,
                          json={"query": "recipes", "filter": bad}).json()
    assert expected["error"] == "invalid_filter"
    page.search("recipes", filter=json.dumps(bad))
    err = p.locator("#filter-error")
    assert err.is_visible() and err.inner_text() == expected["detail"]
    assert p.locator("#error").is_hidden()
    p.screenshot(path=str(shots / "desktop-bad-filter.png"))

    p.fill("#filter", "{not json")
    p.press("input[type=search]", "Enter")
    p.wait_for_selector("#filter-error:not([hidden])")
    assert "not valid JSON" in p.locator("#filter-error").inner_text()
    p.fill("#filter", "")
    page.search("recipes")
    assert p.locator("#filter-error").is_hidden() and hit_ids(p)
    assert page.problems == []


def test_wrong_key_shows_an_error(browser: Any, served: ServeProcess, shots: Path) -> None:
    pg = Page(browser, served)
    try:
        p = pg.open(key="not-the-key")
        p.wait_for_selector("#key-error:not([hidden])")
        assert "401" in p.locator("#key-error").inner_text()
        p.screenshot(path=str(shots / "desktop-wrong-key.png"))
        p.goto(served.base + "/")  # no key at all: the page says so too
        p.evaluate("sessionStorage.clear()")
        p.reload()
        p.wait_for_selector("#key-error:not([hidden])")
        assert "missing API key" in p.locator("#key-error").inner_text()
    finally:
        pg.close()


def test_hostile_document_renders_as_text(page: Page, shots: Path) -> None:
    p = page.open()
    p.wait_for_selector("#overview dd")
    page.search("xss payloads", mode="keyword")
    hit = p.locator("#results .hit").first
    assert hit.locator(".hit-id").inner_text() == XSS_ID
    assert hit.locator(".title").inner_text() == XSS_TITLE
    assert "<script>window.__xss = 2</script>" in hit.locator(".passage").inner_text()
    meta = hit.locator(".meta").inner_text()
    assert XSS_META["html"] in meta and XSS_META["topic"] in meta
    assert p.locator("#results img, #results script, #results b, #results i").count() == 0
    p.screenshot(path=str(shots / "desktop-xss.png"), full_page=True)
    hit.locator(".open").click()
    p.wait_for_selector("#doc-view[open]")
    assert p.locator("#doc-text").inner_text().startswith("<script>")
    assert XSS_META["html"] in p.locator("#doc-meta").inner_text()
    assert p.locator("#doc-view img, #doc-view script").count() == 0
    assert p.evaluate("window.__xss") is None
    assert page.problems == []


def test_chunk_offsets_pick_the_passage(page: Page) -> None:
    """A hit that carries chunks (chunked collections) shows its best chunk, by offsets, highlighted."""
    text = "Intro words that do not matter. " * 5 + "Black holes form when massive stars collapse." + " Tail." * 20
    start = text.index("Black")
    end = start + len("Black holes form when massive stars collapse.")
    hit = {"id": "long", "score": 0.9, "text": text, "title": None, "metadata": {},
           "chunks": [{"index": 0, "start": 0, "end": 30, "score": 0.1},
                      {"index": 3, "start": start, "end": end, "score": 0.8}]}
    page.page.route("**/collections/default/search",
                    lambda route: route.fulfill(status=200, content_type="application/json",
                                                body=json.dumps({"hits": [hit]})))
    p = page.open()
    p.wait_for_selector("#overview dd")
    page.search("black holes")
    passage = p.locator("#results .passage").inner_text()
    assert passage == "… " + text[start:end] + " …"
    assert p.locator("#results .passage mark").all_text_contents() == ["Black", "holes"]
    assert f"chunk 3 · chars {start}–{end}" in p.locator("#results .chunk").inner_text()

    # what semindex sends for a chunked document: the best chunk's text as the hit's text
    hit["text"] = text[start:end]
    page.search("black holes")
    assert p.locator("#results .passage").inner_text() == "… " + text[start:end]
    assert p.locator("#results .passage mark").all_text_contents() == ["Black", "holes"]


def test_phone_width_is_readable(browser: Any, served: ServeProcess, shots: Path) -> None:
    pg = Page(browser, served, width=390, height=844)
    try:
        p = pg.open()
        p.wait_for_selector("#overview dd")
        pg.search("how do black holes form")
        assert hit_ids(p)
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "horizontal scrolling"
        box = p.locator("input[type=search]").bounding_box()
        assert box is not None and box["width"] >= 200
        p.screenshot(path=str(shots / "phone-results.png"), full_page=True)
        p.locator("#results .hit .open").first.click()
        p.wait_for_selector("#doc-view[open]")
        p.screenshot(path=str(shots / "phone-document.png"))
        assert pg.problems == []
    finally:
        pg.close()
