"""The web page (issue 17) in a real Chromium, against real `soul-mcp ui` and `serve --http`
processes on one seeded SQLite file: logging in, reading, diffing and restoring documents, searching,
forgetting and restoring memories, live changes from an MCP client, scopes, CSRF, the keyboard, a
phone's width and dark mode.

Elements are found by the page contract's ids, classes and field names. With
SOUL_MCP_SCREENSHOTS=1 the tests write docs/img/web-overview.png, web-timeline.png and
web-memories.png on the way.
"""

from __future__ import annotations

import getpass
from typing import Any

import anyio
import httpx2
import pytest
from browser import (
    INTENT,
    OTHER_MEMORIES,
    SOUL_VERSIONS,
    STEP_S,
    Servers,
    cli_json,
    emulate,
    fetch,
    open_browser,
    phone_width,
    screenshot,
    servers_fixture,  # noqa: F401  (the `servers` fixture)
    wait_until,
)
from test_http import connect, tool

pytestmark = pytest.mark.slow

LOCAL_AUTHOR = f"web:{getpass.getuser()}"
ALPS = OTHER_MEMORIES[2][0]
QUARTERLY = OTHER_MEMORIES[3][0]


# Browsers: one logged in to `soul-mcp ui` for the module (its link works once), one for token logins.


def by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def path_of(driver: Any) -> str:
    return str(driver.execute_script("return location.pathname"))


def text_of(driver: Any, selector: str = "body") -> str:
    """The text of every element matching `selector`, read in one script: a live update may
    replace parts of the page between two WebDriver calls."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent).join('\\n')"
    return str(driver.execute_script(script, selector))


def data_of(driver: Any, selector: str, key: str) -> list[str]:
    """The `data-KEY` attribute of every element matching `selector`, read in one script."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset[arguments[1]])"
    return [str(value) for value in driver.execute_script(script, selector, key)]


@pytest.fixture(scope="module")
def ui(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Chromium logged in to `soul-mcp ui` with its one-time link."""
    driver = open_browser(tmp_path_factory.mktemp("chromium-ui"))
    try:
        driver.get(servers.ui.base + "/ui/")
        assert path_of(driver) == "/ui/login", "the page was shown without logging in"
        driver.get(servers.ui.link)
        assert path_of(driver) == "/ui/", f"the one-time link led to {driver.current_url}"
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def remote(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Chromium for the pages under `serve --http` (each test logs in with the token it needs)."""
    driver = open_browser(tmp_path_factory.mktemp("chromium-http"))
    try:
        yield driver
    finally:
        driver.quit()


def log_in_with_token(driver: Any, servers: Servers, name: str) -> None:
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.get(servers.http_base + "/ui/login")
    field = by_css(driver, "input[name=token]")
    assert field, "the login page has no `token` field"
    field[0].send_keys(servers.seed.tokens[name])
    submit(driver, field[0])
    wait_until(
        lambda: path_of(driver) == "/ui/", f"the login with the {name} token leads to /ui/", page=driver
    )


# Forms -------------------------------------------------------------------------------------------


def submit(driver: Any, form_or_field: Any) -> None:
    """Click the form's submit button, as a person would."""
    form = form_or_field
    if form.tag_name != "form":
        form = driver.execute_script("return arguments[0].form", form_or_field)
    buttons = [b for b in form.find_elements("css selector", "button, input[type=submit]")
               if (b.get_attribute("type") or "submit") == "submit"]  # fmt: skip
    assert buttons, f"the form {form.get_attribute('action')} has no submit button"
    buttons[0].click()


def fill(driver: Any, form: Any, fields: dict[str, str]) -> None:
    """Set each named field: typed into a visible one, set on a hidden one or a select."""
    for name, value in fields.items():
        found = form.find_elements("css selector", f"[name={name}]")
        assert found, f"the form {form.get_attribute('action')} has no `{name}` field"
        element = found[0]
        if element.tag_name == "select" or element.get_attribute("type") == "hidden":
            driver.execute_script("arguments[0].value = arguments[1]", element, value)
        else:
            element.clear()
            element.send_keys(value)


def form_for(driver: Any, action_suffix: str, inside: str | None = None) -> Any:
    """The form posting to ...ACTION_SUFFIX, preferring one inside the element `inside`."""
    if inside:
        scoped = by_css(driver, f'{inside} form[action$="{action_suffix}"]')
        if scoped:
            return scoped[0]
    forms = by_css(driver, f'form[action$="{action_suffix}"]')
    assert forms, f"{driver.current_url} has no form posting to {action_suffix}"
    return forms[0]


def restore_version(driver: Any, doc: str, version: int, reason: str) -> None:
    """On the document's timeline: the restore form, for `version`, sent."""
    form = form_for(driver, f"/documents/{doc}/restore", inside=f'tr[data-version="{version}"]')
    fill(driver, form, {"version": str(version), "reason": reason})
    submit(driver, form)


def versions_shown(driver: Any) -> list[int]:
    return sorted(int(version) for version in data_of(driver, "tr[data-version]", "version"))


def memory_ids(driver: Any) -> list[str]:
    return data_of(driver, "li.memory", "id")


def soul_versions(servers: Servers) -> int:
    return len(cli_json(servers.seed.db, "soul", "history")["versions"])


def status_of(servers: Servers, memory_id: str) -> str:
    return str(cli_json(servers.seed.db, "memories", "show", memory_id)["status"])


# Logging in ----------------------------------------------------------------------------------------


def test_the_session_cookie_is_out_of_scripts_reach(ui: Any) -> None:
    cookie = ui.get_cookie("soul_ui")
    assert cookie is not None, f"no soul_ui cookie among {[c['name'] for c in ui.get_cookies()]}"
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Strict", False)
    assert "soul_ui" not in ui.execute_script("return document.cookie")


def test_the_local_link_works_once(servers: Servers, ui: Any) -> None:
    # `ui` has used the link; a second use (another browser, another local user) gets no session.
    with httpx2.Client(timeout=STEP_S) as other:
        other.get(servers.ui.link)
        page = other.get(servers.ui.base + "/ui/", follow_redirects=False)
    assert page.status_code in (302, 303, 307), page.status_code
    assert page.headers["location"].endswith("/ui/login")


def test_token_login_and_search_by_keyboard(servers: Servers, remote: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def tab_to(name: str) -> None:
        for _ in range(30):
            if remote.execute_script("return document.activeElement.name") == name:
                return
            ActionChains(remote).send_keys(Keys.TAB).perform()
        pytest.fail(f"Tab never reached the `{name}` field of {remote.current_url}")

    remote.execute_cdp_cmd("Network.clearBrowserCookies", {})
    remote.get(servers.http_base + "/ui/")
    assert path_of(remote) == "/ui/login"
    tab_to("token")
    ActionChains(remote).send_keys(servers.seed.tokens["reader"], Keys.ENTER).perform()
    wait_until(lambda: path_of(remote) == "/ui/", "Enter in the token field logs in", page=remote)
    assert SOUL_VERSIONS[-1][0].splitlines()[2] in text_of(remote)

    remote.get(servers.http_base + "/ui/memories")
    tab_to("q")
    ActionChains(remote).send_keys("hiking Alps", Keys.ENTER).perform()
    alps = servers.seed.memories[ALPS]
    wait_until(lambda: alps in memory_ids(remote), "Enter in the search field finds the hike", page=remote)


# Reading -------------------------------------------------------------------------------------------


def test_overview_shows_the_self(servers: Servers, ui: Any) -> None:
    ui.get(servers.ui.base + "/ui/")
    body = text_of(ui)
    soul_now = SOUL_VERSIONS[-1][0]
    for line in soul_now.splitlines()[2:]:
        assert line in body, f"the overview lacks the soul's line {line!r}"
    assert INTENT in body
    intent_author = cli_json(servers.seed.db, "intent", "show")["author"]
    assert intent_author in body, f"the overview does not name the intent's author {intent_author!r}"
    wake_up = by_css(ui, "details#wake-up")
    assert wake_up, "no <details id=wake-up>"
    assert "I say what I do not know." in text_of(ui, "details#wake-up")
    screenshot(ui, "web-overview")


def test_timeline_and_diff_of_the_soul(servers: Servers, ui: Any) -> None:
    ui.get(servers.ui.base + "/ui/documents/soul")
    assert versions_shown(ui)[:3] == [1, 2, 3]
    for number, (_, reason) in enumerate(SOUL_VERSIONS, start=1):
        assert reason in text_of(ui, f'tr[data-version="{number}"]'), f"version {number} lacks its reason"
    assert by_css(ui, 'a[href*="/ui/documents/soul/diff?"]'), "the timeline links to no diff"

    ui.get(servers.ui.base + "/ui/documents/soul/diff?a=1&b=3")
    added, removed = text_of(ui, "#diff ins"), text_of(ui, "#diff del")
    assert "I am Wren, a patient engineer." in added
    assert "I say what I do not know." in added
    assert "I am Wren, a careful engineer." in removed
    assert "I write tests before I trust code." not in added + removed, "an unchanged line is marked"
    screenshot(ui, "web-timeline")


# Changing ------------------------------------------------------------------------------------------


def test_restore_stores_a_new_version(servers: Servers, ui: Any) -> None:
    ui.get(servers.ui.base + "/ui/documents/soul")
    before = versions_shown(ui)
    restore_version(ui, "soul", 1, "back to the first draft")
    newest = before[-1] + 1
    wait_until(
        lambda: by_css(ui, f'tr[data-version="{newest}"]'), f"version {newest} on the timeline", page=ui
    )
    assert path_of(ui) == "/ui/documents/soul"
    row = text_of(ui, f'tr[data-version="{newest}"]')
    assert "back to the first draft" in row
    assert LOCAL_AUTHOR in row, f"the restore is not by {LOCAL_AUTHOR}: {row!r}"
    soul = cli_json(servers.seed.db, "soul", "show")
    assert (soul["content"], soul["author"]) == (SOUL_VERSIONS[0][0], LOCAL_AUTHOR)


def test_search_finds_a_memory_by_its_meaning(servers: Servers, ui: Any) -> None:
    ui.get(servers.ui.base + "/ui/memories?q=new+dog")
    found = memory_ids(ui)
    assert found and found[0] == servers.seed.puppy, f"'new dog' found {found}, not the puppy first"

    ui.get(servers.ui.base + "/ui/memories?kind=preference")
    assert memory_ids(ui) == [servers.seed.memories[OTHER_MEMORIES[1][0]]]

    ui.get(servers.ui.base + "/ui/memories")
    assert sorted(memory_ids(ui)) == sorted(servers.seed.memories.values())
    screenshot(ui, "web-memories")


def test_forget_and_restore_a_memory(servers: Servers, ui: Any) -> None:
    alps = servers.seed.memories[ALPS]
    ui.get(f"{servers.ui.base}/ui/memories/{alps}")
    form = form_for(ui, f"/memories/{alps}/forget")
    fill(ui, form, {"reason": "that trip is told elsewhere"})
    submit(ui, form)
    wait_until(lambda: status_of(servers, alps) == "forgotten", "the memory forgotten")
    wait_until(lambda: "that trip is told elsewhere" in text_of(ui), "the forget reason on the page", page=ui)

    ui.get(f"{servers.ui.base}/ui/memories?status=forgotten")
    assert alps in memory_ids(ui)
    ui.get(f"{servers.ui.base}/ui/memories?status=active")
    assert alps not in memory_ids(ui)

    ui.get(f"{servers.ui.base}/ui/memories/{alps}")
    submit(ui, form_for(ui, f"/memories/{alps}/restore"))
    wait_until(lambda: status_of(servers, alps) == "active", "the memory restored")
    ui.get(f"{servers.ui.base}/ui/memories?status=active")
    assert alps in memory_ids(ui)


def test_a_refused_restore_keeps_what_was_typed(servers: Servers, ui: Any) -> None:
    ui.get(servers.ui.base + "/ui/documents/soul")
    versions = soul_versions(servers)
    too_long = "because " * 130  # over the tools' 1,000 characters for a reason
    form = form_for(ui, "/documents/soul/restore")
    fill(ui, form, {"version": "2"})
    ui.execute_script(
        "arguments[0].value = arguments[1]", form.find_element("css selector", "[name=reason]"), too_long
    )  # fmt: skip  (typing 1,040 characters one by one is slow)
    submit(ui, form)
    wait_until(lambda: by_css(ui, ".problem"), "a .problem on the refused form", page=ui)
    assert "reason is 1,040 characters; the limit is 1,000" in text_of(ui, ".problem")  # the tools' text
    kept = ui.execute_script(
        "return document.querySelector('form[action$=\"/restore\"] [name=reason]').value"
    )
    assert kept == too_long, "the reason typed was not kept"
    assert soul_versions(servers) == versions


def test_a_post_without_its_csrf_token_changes_nothing(servers: Servers, ui: Any) -> None:
    quarterly = servers.seed.memories[QUARTERLY]
    ui.get(f"{servers.ui.base}/ui/memories/{quarterly}")
    versions = soul_versions(servers)
    for csrf in ({}, {"csrf": "not-the-session-token"}):
        refused = fetch(ui, f"/ui/memories/{quarterly}/forget", {"reason": "forged", **csrf})
        assert refused["status"] == 403, refused
        refused = fetch(ui, "/ui/documents/soul/restore", {"version": "2", "reason": "forged", **csrf})
        assert refused["status"] == 403, refused
    assert status_of(servers, quarterly) == "active"
    assert soul_versions(servers) == versions

    # The same request with the session's token is done: the refusals were the token's doing.
    csrf = str(
        form_for(ui, f"/memories/{quarterly}/forget")
        .find_element("css selector", "[name=csrf]")
        .get_attribute("value")
    )
    done = fetch(ui, f"/ui/memories/{quarterly}/forget", {"reason": "with its token", "csrf": csrf})
    assert done["status"] in (0, 303), done  # 0: the redirect, which fetch does not follow here
    assert status_of(servers, quarterly) == "forgotten"
    assert fetch(ui, f"/ui/memories/{quarterly}/restore", {"csrf": csrf})["status"] in (0, 303)
    assert status_of(servers, quarterly) == "active"


def test_activity_lists_changes_newest_first(servers: Servers, ui: Any) -> None:
    # A change through the page, after the seed's: the intent before the current one, back.
    ui.get(servers.ui.base + "/ui/documents/intent")
    before = versions_shown(ui)
    restore_version(ui, "intent", before[-2], "the page's own change")
    wait_until(lambda: by_css(ui, f'tr[data-version="{before[-1] + 1}"]'), "the intent restored", page=ui)
    ui.get(servers.ui.base + "/ui/activity")
    rows = ui.execute_script("return [...document.querySelectorAll('tr.change')].map(e => e.textContent)")
    assert LOCAL_AUTHOR in rows[0], rows[:3]
    seeded = [row for row in rows if "seed-agent" in row]
    assert len(seeded) >= 10, f"the seed's 10 changes are not all listed: {rows}"
    assert rows.index(seeded[0]) > max(i for i, row in enumerate(rows) if LOCAL_AUTHOR in row)


# Scopes under `serve --http` -------------------------------------------------------------------------


def test_a_read_write_token_may_not_change_identity(servers: Servers, remote: Any) -> None:
    log_in_with_token(remote, servers, "writer")
    remote.get(servers.http_base + "/ui/documents/soul")
    versions = soul_versions(servers)
    restore_version(remote, "soul", 2, "a writer trying")
    wait_until(lambda: by_css(remote, ".problem"), "a .problem on the refusal page", page=remote)
    assert "identity" in text_of(remote, ".problem")
    assert soul_versions(servers) == versions

    # The same refusal answers 403, with the session's own CSRF token.
    remote.get(servers.http_base + "/ui/documents/soul")
    csrf = form_for(remote, "/documents/soul/restore").find_element("css selector", "[name=csrf]")
    sent = fetch(remote, "/ui/documents/soul/restore",
                 {"version": "2", "reason": "again", "csrf": str(csrf.get_attribute("value"))})  # fmt: skip
    assert sent["status"] == 403, sent
    assert soul_versions(servers) == versions

    # What the token does allow is done in its name: the intent is `write`.
    remote.get(servers.http_base + "/ui/documents/intent")
    before = versions_shown(remote)
    assert len(before) >= 2, f"the seed wrote two intents, the timeline shows {before}"
    restore_version(remote, "intent", before[-2], "the writer restores")
    wait_until(
        lambda: by_css(remote, f'tr[data-version="{before[-1] + 1}"]'), "the intent restored", page=remote
    )
    assert "web:writer" in text_of(remote, f'tr[data-version="{before[-1] + 1}"]')


def test_a_read_token_may_not_forget(servers: Servers, remote: Any) -> None:
    quarterly = servers.seed.memories[QUARTERLY]
    log_in_with_token(remote, servers, "reader")
    remote.get(f"{servers.http_base}/ui/memories/{quarterly}")
    forms = by_css(remote, f'form[action$="/memories/{quarterly}/forget"]')
    if forms:  # a page may leave out what the login may not do; the POST below is refused anyway
        fill(remote, forms[0], {"reason": "a reader trying"})
        submit(remote, forms[0])
        wait_until(lambda: by_css(remote, ".problem"), "a .problem on the refusal page", page=remote)
        assert "write" in text_of(remote, ".problem")
    remote.get(f"{servers.http_base}/ui/memories/{quarterly}")
    csrf = remote.execute_script("return document.querySelector('[name=csrf]').value")
    sent = fetch(remote, f"/ui/memories/{quarterly}/forget", {"reason": "a reader trying", "csrf": csrf})
    assert sent["status"] == 403, sent
    assert status_of(servers, quarterly) == "active"


# Live ----------------------------------------------------------------------------------------------


def test_a_change_by_an_mcp_client_appears_without_reload(servers: Servers, remote: Any) -> None:
    log_in_with_token(remote, servers, "reader")
    remote.get(servers.http_base + "/ui/")
    remote.execute_script("window.soulTestMarker = 'same page'")
    live_before = text_of(remote, "#live")
    intent = "Watch the page change while an agent writes."

    async def agent_writes() -> None:
        async with connect(servers.http.url, servers.seed.tokens["writer"]) as client:
            await tool(client, "write_intent", {"content": intent})
            await tool(client, "remember", {"content": "The page showed this as it happened"})

    anyio.run(agent_writes)
    wait_until(
        lambda: intent in text_of(remote), "the new intent on the open overview", timeout=10, page=remote
    )
    wait_until(lambda: text_of(remote, "#live") != live_before, "a line in #live", timeout=10, page=remote)
    assert remote.execute_script("return window.soulTestMarker") == "same page", "the page was reloaded"


# Looks ---------------------------------------------------------------------------------------------


def widths(driver: Any) -> tuple[int, int]:
    """The viewport's width and the page's, in CSS pixels."""
    script = "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
    inner, scroll = driver.execute_script(script)
    return int(inner), int(scroll)


def test_phone_width_needs_no_horizontal_scroll(servers: Servers, ui: Any) -> None:
    pages = ["/ui/", "/ui/documents/soul", "/ui/documents/soul/diff?a=1&b=3", "/ui/memories",
             f"/ui/memories/{servers.seed.puppy}", "/ui/activity"]  # fmt: skip
    phone_width(ui, True)
    try:
        for page in pages:
            ui.get(servers.ui.base + page)
            # The emulated metrics can take a moment to reach the first layout; a page without
            # <meta name=viewport> stays 980 px wide, as on a real phone, and fails here.
            wait_until(lambda: widths(ui)[0] <= 400, f"{page} laid out at a phone's width", 5, ui)
            inner, scroll = widths(ui)
            assert scroll <= inner, f"{page} is {scroll} px wide at a phone's {inner} px"
    finally:
        phone_width(ui, False)


def background(driver: Any) -> tuple[int, ...]:
    """The page's background colour (the body's, else the root's) as RGB."""
    colour = driver.execute_script("""
        for (const e of [document.body, document.documentElement]) {
            const c = getComputedStyle(e).backgroundColor;
            if (c && c !== "transparent" && c !== "rgba(0, 0, 0, 0)") return c;
        }
        return "rgb(255, 255, 255)";
    """)
    return tuple(int(float(part)) for part in colour[colour.index("(") + 1 : -1].split(",")[:3])


def test_dark_mode_darkens_the_background(servers: Servers, ui: Any) -> None:
    ui.get(servers.ui.base + "/ui/")
    emulate(ui, prefers_color_scheme="light")
    light = background(ui)
    emulate(ui, prefers_color_scheme="dark")
    try:
        dark = background(ui)
    finally:
        emulate(ui)
    assert sum(dark) < sum(light), f"dark mode's background {dark} is not darker than {light}"
