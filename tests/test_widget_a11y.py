"""The finder's accessibility in a real browser: axe-core (WCAG 2.1 A/AA, shadow DOM included)
per theme, a keyboard walk, and the smaller items of issue 15.

One seeded SQLite database, one API server, one host site and one Chromium for the module.
axe.min.js comes from the axe-playwright-python wheel (dev extras): nothing is fetched.
"""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from referral.db import get_database
from tests.conftest import build_app, skip_or_fail
from tests.test_widget import (
    ARTIFACTS,
    SAN_ANTONIO,
    TIMEOUT_MS,
    HostSite,
    _ServerThread,
)

WCAG21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
THEMES = {
    "default": "",
    "dark": "--cf-background:#111; --cf-text:#eee",
    "dark-surface": "--cf-background:#111; --cf-text:#eee; --cf-surface:#222",
}
FIND_STATUS = re.compile(r"nearest|within|may offer")


@pytest.fixture(scope="module")
def axe_js() -> str:
    try:
        return resources.files("axe_playwright_python").joinpath("axe.min.js").read_text()
    except ModuleNotFoundError:
        skip_or_fail("axe-playwright-python is not installed (pip install -e '.[dev]')")
        raise


@pytest.fixture(scope="module")
def chromium(browser: Any) -> Any:
    return browser


@pytest.fixture(scope="module")
def api(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target = tmp_path_factory.mktemp("a11y") / "referral.db"
    shutil.copyfile(sqlite_template, target)
    app = build_app(f"sqlite:///{target}")
    served = _ServerThread(app)
    yield f"http://127.0.0.1:{served.port}"
    served.close()
    get_database(app).dispose()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostSite]:
    directory = tmp_path_factory.mktemp("a11y-site")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield HostSite(directory, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Any]:
    contexts: list[Any] = []

    def opener(url: str, **options: Any) -> Any:
        context = chromium.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        finder = page.locator("[data-clinic-finder]").first
        finder.get_by_label("ZIP code, city or address").wait_for()
        return page

    yield opener
    for context in contexts:
        context.close()


def axe_violations(page: Any, axe_js: str) -> list[str]:
    page.evaluate(axe_js)
    options = {"runOnly": {"type": "tag", "values": WCAG21_AA}, "resultTypes": ["violations"]}
    result = page.evaluate("options => axe.run(document, options)", options)
    return [
        f"{item['id']} ({item['impact']}): {node['target']} {node.get('failureSummary', '')}"
        for item in result["violations"]
        for node in item["nodes"]
    ]


def rgb(css: str) -> tuple[float, float, float]:
    """sRGB 0-1 from a computed colour: rgb()/rgba() or color(srgb ...) (what color-mix gives)."""
    numbers = [float(n) for n in re.findall(r"-?[0-9]*\.?[0-9]+(?:e-?[0-9]+)?", css)]
    if css.startswith("color(srgb"):
        return numbers[0], numbers[1], numbers[2]
    assert css.startswith("rgb"), css
    return numbers[0] / 255, numbers[1] / 255, numbers[2] / 255


def contrast(a: str, b: str) -> float:
    def luminance(colour: str) -> float:
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb(colour)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def focused(page: Any) -> dict[str, str]:
    return dict(
        page.evaluate(
            """() => {
              let el = document.activeElement;
              while (el && el.shadowRoot && el.shadowRoot.activeElement) {
                el = el.shadowRoot.activeElement;
              }
              const style = getComputedStyle(el);
              const root = el.getRootNode();
              const panel = root.querySelector ? root.querySelector('.cf') : null;
              return {tag: el.tagName, id: el.id || '', cls: el.className || '',
                      outline: style.outlineStyle, ring: style.outlineColor,
                      behind: panel ? getComputedStyle(panel).backgroundColor : ''};
            }"""
        )
    )


def search(finder: Any, text: str) -> None:
    where = finder.get_by_label("ZIP code, city or address")
    where.fill(text)
    where.press("Enter")


# ---- axe-core per theme ----------------------------------------------------------------------


@pytest.mark.parametrize("theme", list(THEMES))
def test_no_wcag_violation_in_each_theme(theme, api, site, open_page, axe_js):
    style = THEMES[theme]
    div = (
        f'<div data-clinic-finder style="{style}"></div>\n'
        f'<div data-clinic-finder data-include-possible="false" style="{style}"></div>'
    )
    url = site.page(
        f"theme-{theme}.html", api, div=div, script_attrs='data-specialty="sports" data-radius="10"'
    )
    page = open_page(url, viewport={"width": 1024, "height": 1400})
    assert axe_violations(page, axe_js) == []

    # The focus ring stands out from the finder's background by 3:1 (WCAG 1.4.11).
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    now = focused(page)
    assert now["id"] == "cf-q" and now["outline"] != "none"
    assert contrast(now["ring"], now["behind"]) >= 3, now

    # Results with every kind of card: possible matches, the nearest outside the radius.
    finders = page.locator("[data-clinic-finder]")
    for index in (0, 1):
        search(finders.nth(index), SAN_ANTONIO)
    finders.nth(0).locator(".cf-status").filter(has_text="may offer").wait_for()
    finders.nth(1).locator(".cf-status").filter(has_text="The nearest is").wait_for()
    assert finders.nth(0).locator(".cf-possible").count() == 3
    assert axe_violations(page, axe_js) == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"widget-theme-{theme}.png"), full_page=True)

    # An error, tied to the input.
    search(finders.nth(0), "00000")
    finders.nth(0).get_by_role("alert").filter(has_text="ZIP code").wait_for()
    assert axe_violations(page, axe_js) == []


# ---- keyboard --------------------------------------------------------------------------------


def test_keyboard_walk_searches_once_when_a_select_settles(api, site, open_page):
    page = open_page(site.page("walk.html", api))
    nearest: list[str] = []
    page.on("request", lambda r: nearest.append(r.url) if "/v1/locations/nearest?" in r.url else 0)
    finder = page.locator("[data-clinic-finder]")
    # Count what the live region is told while the user steps through a select.
    finder.evaluate(
        """host => {
          const status = host.shadowRoot.querySelector('.cf-status');
          window.statusWrites = 0;
          new MutationObserver(() => { window.statusWrites += 1; })
            .observe(status, {childList: true, characterData: true, subtree: true});
        }"""
    )
    keyboard = page.keyboard
    keyboard.press("Tab")
    keyboard.press("Tab")
    assert focused(page)["id"] == "cf-q"
    keyboard.type(SAN_ANTONIO)
    keyboard.press("Enter")
    finder.locator(".cf-status").filter(has_text=FIND_STATUS).wait_for()
    assert len(nearest) == 1

    keyboard.press("Tab")
    keyboard.press("Tab")
    assert focused(page)["id"] == "cf-radius"
    writes = page.evaluate("window.statusWrites")
    for _ in range(3):  # 25 -> 50 -> 100 -> any distance
        keyboard.press("ArrowDown")
    assert finder.locator("#cf-radius").input_value() == "any"
    assert len(nearest) == 1, "no search while stepping"
    finder.locator(".cf-status").filter(has_text="nearest to").wait_for()
    assert len(nearest) == 2 and "radius=" not in nearest[-1]
    # One "Searching…" and one answer, not one pair per key.
    assert page.evaluate("window.statusWrites") - writes <= 2

    # Leaving a changed select searches at once.
    keyboard.press("ArrowUp")
    keyboard.press("Tab")
    finder.locator(".cf-status").filter(has_text="within 100 miles").wait_for()
    assert len(nearest) == 3

    # On through the rest: every stop shows a ring of 3:1, and the walk reaches the results.
    seen = []
    for _ in range(25):
        keyboard.press("Tab")
        now = focused(page)
        if now["tag"] == "BODY":
            break
        assert now["outline"] != "none", now
        assert contrast(now["ring"], now["behind"]) >= 3, now
        seen.append(now["id"] or now["cls"])
    assert seen[:2] == ["cf-specialty", "cf-locate"]
    assert "cf-phone" in seen and "cf-directions" in seen


# ---- the smaller items -----------------------------------------------------------------------


def test_live_regions_stay_in_the_accessibility_tree_while_empty(api, site, open_page):
    page = open_page(site.page("regions.html", api))
    finder = page.locator("[data-clinic-finder]")
    for selector in (".cf-status", ".cf-error"):
        region = finder.locator(selector)
        assert region.text_content() == ""
        assert region.evaluate("el => getComputedStyle(el).display") != "none", selector
        assert region.get_attribute("hidden") is None, selector


def test_the_error_is_tied_to_the_input(api, site, open_page):
    page = open_page(site.page("tied.html", api))
    finder = page.locator("[data-clinic-finder]")
    where = finder.get_by_label("ZIP code, city or address")
    search(finder, "00000")
    finder.get_by_role("alert").filter(has_text="ZIP code").wait_for()
    expect(where).to_have_attribute("aria-invalid", "true")
    expect(where).to_have_accessible_description(re.compile(r"^We could not find that ZIP code"))
    message_id = where.get_attribute("aria-errormessage")
    assert message_id and "We could not find" in finder.locator(f"#{message_id}").inner_text()

    search(finder, SAN_ANTONIO)
    finder.locator(".cf-status").filter(has_text=FIND_STATUS).wait_for()
    expect(where).not_to_have_attribute("aria-invalid", "true")
    expect(where).to_have_accessible_description(re.compile(r"^For example 78201"))
    assert where.get_attribute("aria-errormessage") is None


def test_the_site_chooses_the_heading_level(api, site, open_page):
    div = '<div data-clinic-finder data-heading-level="2"></div><div data-clinic-finder></div>'
    page = open_page(site.page("levels.html", api, div=div))
    finders = page.locator("[data-clinic-finder]")
    for index in (0, 1):
        search(finders.nth(index), SAN_ANTONIO)
        finders.nth(index).locator(".cf-status").filter(has_text=FIND_STATUS).wait_for()
    names = finders.nth(0).locator(".cf-name")
    assert names.count() == 3
    assert finders.nth(0).get_by_role("heading", level=2).count() == 3
    assert finders.nth(1).get_by_role("heading", level=3).count() == 3
    # The embed page has its h1, so its clinics are h2.
    embed = open_page(f"{api}/embed?zip={SAN_ANTONIO}")
    embedded = embed.locator("[data-clinic-finder]")
    embedded.locator(".cf-status").filter(has_text=FIND_STATUS).wait_for()
    assert embedded.get_by_role("heading", level=2).count() == 3


def test_status_names_the_specialty_even_when_labels_come_late(api, site, open_page, chromium):
    held: list[Any] = []
    context = chromium.new_context()
    try:
        context.route("**/v1/specialties", lambda route: held.append(route))
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        url = site.page("late.html", api, script_attrs='data-specialty="sports" data-radius="10"')
        page.goto(url)
        finder = page.locator("[data-clinic-finder]")
        with page.expect_response(lambda r: "/v1/locations/nearest?" in r.url):
            search(finder, SAN_ANTONIO)
        page.wait_for_timeout(300)  # the answer is in; the labels are not
        assert held, "the specialties request was held"
        held[0].continue_()
        finder.locator(".cf-status").filter(has_text="may offer").wait_for()
        status = finder.locator(".cf-status").inner_text()
        assert "offering Sports;" in status and "sports" not in status, status
    finally:
        context.close()


def test_selects_show_their_whole_text_at_320_px(api, site, open_page, axe_js):
    page = open_page(site.page("narrow.html", api), viewport={"width": 320, "height": 640})
    finder = page.locator("[data-clinic-finder]")
    finder.locator("#cf-specialty option[value=sports]").wait_for(state="attached")
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
    # The distance and unit selects, every option: room for its text is the width less the
    # padding and the arrow (~1.5em).
    clipped = finder.locator("#cf-radius, #cf-unit").evaluate_all(
        """selects => selects.flatMap(select => {
          const style = getComputedStyle(select);
          const ctx = document.createElement('canvas').getContext('2d');
          ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
          const room = select.clientWidth - parseFloat(style.paddingLeft)
            - parseFloat(style.paddingRight) - 1.5 * parseFloat(style.fontSize);
          return [...select.options]
            .filter(option => ctx.measureText(option.text).width > room)
            .map(option => `${select.id}: ${option.text}`);
        })"""
    )
    assert clipped == []

    # The specialty select: the longest label, chosen, wraps onto more lines rather than clip.
    specialty = finder.locator("#cf-specialty")
    one_line = specialty.bounding_box()
    longest = specialty.evaluate(
        "s => [...s.options].reduce((a, b) => (b.text.length > a.text.length ? b : a)).value"
    )
    specialty.select_option(longest)
    wrapped = specialty.bounding_box()
    assert one_line is not None and wrapped is not None
    assert specialty.evaluate("s => getComputedStyle(s).appearance") == "base-select"
    assert wrapped["height"] > one_line["height"] * 1.2
    assert wrapped["x"] + wrapped["width"] <= 320
    # Still a select for the keyboard: open it, step up one option, choose it.
    specialty.focus()
    for key in ("ArrowUp", "ArrowUp", "Enter"):
        page.keyboard.press(key)
    assert specialty.input_value() not in ("", longest)
    assert axe_violations(page, axe_js) == []


def test_a_clinic_at_the_searchers_own_zip_says_where_not_zero(api, site, open_page):
    page = open_page(site.page("centroid.html", api))
    finder = page.locator("[data-clinic-finder]")
    search(finder, "55413")
    finder.locator(".cf-status").filter(has_text=FIND_STATUS).wait_for()
    card = finder.locator(".cf-result").first
    assert card.locator(".cf-name").inner_text() == "PRO Therapy"
    assert card.locator(".cf-distance").inner_text() == "in 55413"
    assert "0.0" not in finder.locator(".cf-results").first.inner_text()
