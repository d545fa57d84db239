"""The chat page at ``/`` (``megagpt/serving/chat.html``) driven in a real headless Chromium through
Selenium, against the live test server (tiny forward + backward models, so MMI is offered)."""
import os
import shutil

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHINESE = "你好，今天天气怎么样？"

# Records the last bot turn at every DOM change: [streaming?, text] pairs in window.__seen.
RECORDER = """
window.__seen = [];
new MutationObserver(() => {
  const bots = document.querySelectorAll('#messages .turn.bot');
  const b = bots[bots.length - 1];
  if (b) window.__seen.push([b.classList.contains('streaming'), b.textContent]);
}).observe(document.getElementById('messages'),
           {subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['class']});
"""


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("no selenium: pip install selenium")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            pytest.skip(f"no Chromium ({path} missing): apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--window-size=1000,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:  # an explicit driver path: Selenium Manager never downloads anything
        d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as e:
        pytest.skip(f"Chromium did not start: {e.msg}")
    d.set_script_timeout(20)
    yield d
    d.quit()


def wait(d, cond, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(d, timeout, poll_frequency=0.05).until(cond)


def open_page(d, url):
    from selenium.webdriver.common.by import By
    d.get(url + "/")
    wait(d, lambda d: d.find_element(By.ID, "status").text.startswith("ready"))


def by_id(d, name):
    from selenium.webdriver.common.by import By
    return d.find_element(By.ID, name)


def turns(d, kind):
    from selenium.webdriver.common.by import By
    return d.find_elements(By.CSS_SELECTOR, f"#messages .turn.{kind}")


def content(el):
    return el.get_attribute("textContent")  # exact: .text trims and folds whitespace


def say(d, text):
    """Types a line, presses Enter, and waits for the reply to finish; returns the reply's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    n = len(turns(d, "bot"))
    by_id(d, "input").send_keys(text + Keys.ENTER)
    wait(d, lambda d: len(turns(d, "bot")) == n + 1)
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, "#messages .streaming")
         and by_id(d, "send").is_enabled())
    assert by_id(d, "error").text == ""
    assert by_id(d, "status").text.startswith("done"), by_id(d, "status").text
    return content(turns(d, "bot")[-1])


def set_field(d, name, value):
    el = by_id(d, name)
    el.clear()
    el.send_keys(str(value))


def severe_logs(d):
    try:
        return [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - a driver without the log endpoint: nothing to check
        return []


def test_chat_page_conversation(driver, server):
    from selenium.webdriver.common.by import By
    d = driver
    open_page(d, server.url)
    assert d.execute_script("return document.characterSet") == "UTF-8"
    mmi = by_id(d, "mmi")
    assert mmi.is_displayed() and mmi.is_enabled()  # the server has a backward model
    assert [by_id(d, k).get_attribute("value") for k in ("temperature", "top_p", "top_k", "max_tokens")] == \
        ["0.8", "0.95", "50", "40"]

    # 1. an English line: the reply streams in (seen partial, growing, while marked streaming)
    set_field(d, "max_tokens", 60)
    d.execute_script(RECORDER)
    reply = say(d, "hello there, how are you?")
    seen = d.execute_script("return window.__seen")
    partial = [t for streaming, t in seen if streaming and t]
    assert partial, f"never saw text while streaming: {seen}"
    assert len(set(partial)) >= 2, f"the text did not grow while streaming: {seen}"
    assert all(reply.startswith(t) for t in partial)  # each observation a prefix of the final text
    assert reply.strip() and not seen[-1][0]
    assert content(turns(d, "user")[0]) == "hello there, how are you?"
    req = d.execute_script("return window.lastRequest")
    assert req["stream"] is True and req["max_tokens"] == 60 and req["temperature"] == 0.8 and not req.get("mmi")

    # 2. Chinese input: shown as typed, sent with the history, answered
    assert say(d, CHINESE)
    assert turns(d, "user")[-1].text == content(turns(d, "user")[-1]) == CHINESE
    req = d.execute_script("return window.lastRequest")
    assert [m["role"] for m in req["messages"]] == ["user", "assistant", "user"]
    assert req["messages"][0]["content"] == "hello there, how are you?"
    assert req["messages"][-1]["content"] == CHINESE
    hist = d.execute_script("return window.chatHistory")
    assert len(hist) == 4 and hist[2]["content"] == CHINESE

    # 3. MMI on: the reranked reply arrives (as one piece)
    mmi.click()
    assert mmi.is_selected()
    assert say(d, "tell me more")
    req = d.execute_script("return window.lastRequest")
    assert req["mmi"] is True and req["mmi_n"] == 8 and len(req["messages"]) == 5
    assert len(turns(d, "bot")) == 3
    mmi.click()

    # 4. Reset: nothing shown, nothing remembered; the next request holds only the new turn
    by_id(d, "reset").click()
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, "#messages > *"))
    assert d.execute_script("return window.chatHistory") == []
    say(d, "a fresh start")
    req = d.execute_script("return window.lastRequest")
    assert req["messages"] == [{"role": "user", "content": "a fresh start"}]
    assert len(turns(d, "user")) == 1 and len(turns(d, "bot")) == 1
    assert d.execute_script("return window.chatHistory.length") == 2

    assert severe_logs(d) == []


def test_chat_page_shows_server_errors(driver, server):
    d = driver
    open_page(d, server.url)
    set_field(d, "max_tokens", 100000)  # past the tiny model's context: HTTP 400
    by_id(d, "input").send_keys("too long a reply")
    by_id(d, "send").click()
    wait(d, lambda d: by_id(d, "error").text != "")
    assert "400" in by_id(d, "error").text and "max_tokens" in by_id(d, "error").text
    wait(d, lambda d: by_id(d, "send").is_enabled())
    assert turns(d, "user") == [] and turns(d, "bot") == []  # the failed turn is taken back...
    assert by_id(d, "input").get_attribute("value") == "too long a reply"  # ...and left to retry
    assert d.execute_script("return window.chatHistory") == []
    set_field(d, "max_tokens", 20)
    by_id(d, "send").click()
    wait(d, lambda d: by_id(d, "status").text.startswith("done"))
    assert by_id(d, "error").text == "" and len(turns(d, "bot")) == 1
    # the 400 itself is logged by Chromium as a failed resource load; nothing else may be
    assert [e for e in severe_logs(d) if "status of 400" not in e["message"]] == []
