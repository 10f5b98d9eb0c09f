"""The chat page (``GET /``) in a real headless browser: Debian's Chromium driven by Playwright, against a real
``retnet serve`` process with a tiny random model and an API key.

Type a message, see the answer stream in, reload (the conversation is listed and reopens), continue it, then
branch from the first answer. Screenshots go to ``$RETNET_CHAT_SCREENSHOTS`` when set (the README's images:
``RETNET_CHAT_SCREENSHOTS=docs python -m pytest tests/serving/test_chat_page.py``), else to a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.serving.helpers import ServerProcess, make_model_dir
from tests.serving.test_server import Reference

KEY = "sk-page-key"
MODEL = "tiny-retnet"
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow  # a server and a browser: ~15-30 s on 2 cores

# Counts the text changes of the answer while it streams (the page's own DOM, observed from outside).
COUNT_STREAM_UPDATES = """
window.__streamUpdates = 0;
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    if (el && el.closest && el.closest(".msg.assistant.streaming")) window.__streamUpdates++;
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def chromium_path() -> str:
    """Debian's Chromium; its absence fails the test (CI installs it in ``.ci/run``)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the chat page test needs Debian's chromium package "
            "(as root: apt-get update && apt-get install -y chromium)"
        )
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("page") / MODEL)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "conversations"
    with ServerProcess(model_dir, data, "--dtype", "float64", "--max-tokens", "64", api_key=KEY) as proc:
        yield proc


def stored(server, **params) -> list[dict]:
    resp = httpx.get(server.base_url + "/v1/responses", params=params, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def test_chat_page_streams_lists_reloads_and_branches(server, model_dir, tmp_path):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]' (it is in the test extra)")
    shots = Path(os.environ.get("RETNET_CHAT_SCREENSHOTS") or tmp_path)
    ref = Reference(model_dir)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.add_init_script(COUNT_STREAM_UPDATES)
            page.goto(server.base_url + "/")

            # the server has a key: the page asks for it
            expect(page.locator("#key-dialog")).to_be_visible()
            page.fill("#key-input", KEY)
            page.click("#key-save")
            expect(page.locator("#status")).to_have_text("ready")
            expect(page.locator("#model-name")).to_have_text(MODEL)

            # type a message; the answer streams in, equal to the greedy reference
            page.fill("#max-tokens", "24")
            page.fill("#prompt", "Hello, page")
            page.keyboard.press("Enter")
            expect(page.locator(".msg.assistant:not(.streaming)")).to_have_count(1, timeout=60_000)
            answer = page.locator(".msg.assistant").first
            expect(page.locator("#status")).to_contain_text("tokens")
            want = ref.chat([[("user", "Hello, page")]], 24)[0]
            assert answer.locator(".text").text_content() == want
            assert page.evaluate("window.__streamUpdates") >= 2, "the answer did not arrive in pieces"
            first = stored(server, roots="true")[0]
            assert (
                first["input"][0]["content"][0]["text"] == "Hello, page"
                and first["output"][0]["content"][0]["text"] == want
            )

            # reload: the key is remembered, the conversation is listed and reopens
            page.reload()
            expect(page.locator("#status")).to_have_text("ready")
            listed = page.locator("#conversations li")
            expect(listed).to_have_count(1)
            expect(listed.first).to_contain_text("Hello, page")
            page.goto(server.base_url + "/")  # a fresh page without the branch in its address
            expect(page.locator("#thread .msg")).to_have_count(0)
            page.locator("#conversations li").first.click()
            page.fill("#max-tokens", "24")
            expect(page.locator(".msg.assistant .text").first).to_have_text(want)

            # continue, then branch from the first answer
            page.fill("#prompt", "Tell me more")
            page.keyboard.press("Enter")
            expect(page.locator(".msg.assistant:not(.streaming)")).to_have_count(2, timeout=60_000)
            page.screenshot(path=str(shots / "chat-page.png"))
            page.locator(".msg.assistant").first.get_by_role("button", name="Branch from here").click()
            expect(page.locator(".msg.assistant")).to_have_count(1)
            page.fill("#prompt", "Something else")
            page.keyboard.press("Enter")
            expect(page.locator(".msg.assistant:not(.streaming)")).to_have_count(2, timeout=60_000)
            expect(page.locator(".msg.assistant").nth(1)).to_contain_text("branch 2/2")
            page.screenshot(path=str(shots / "chat-branch.png"))

            tree = stored(server, root_id=first["id"], order="asc")
            children = [r for r in tree if r["previous_response_id"] == first["id"]]
            assert [c["input"][0]["content"][0]["text"] for c in children] == ["Tell me more", "Something else"]
            branch = page.locator(".msg.assistant .text").nth(1).text_content()
            assert branch == ref.chat([[("user", "Hello, page")], [("user", "Something else")]], 24)[1]

            # the sibling switch shows the other branch
            page.locator(".msg.assistant").nth(1).get_by_role("button", name="\u2039").click()
            expect(page.locator(".msg.user .text").nth(1)).to_have_text("Tell me more")
        finally:
            browser.close()
    assert (shots / "chat-page.png").stat().st_size > 0 and (shots / "chat-branch.png").stat().st_size > 0
