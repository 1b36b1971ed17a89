"""The weekly report in a real browser (headless Chromium): it renders offline, every image
decodes, nothing is fetched from the network, and the page logs no error and opens no
dialog, also when clinic ids and condition labels hold HTML/JS markup.

Uses the system ``chromium`` (Debian package; .ci/run installs it) and, for the DevTools
protocol, ``websocket-client`` (locked in requirements.lock). Skips with a message when
either is missing. Every browser call has a timeout; the module takes well under 30 s.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from report_helpers import (  # noqa: F401  (fixtures are used by name)
    FIGURES, XSS_CLINIC_IMG, XSS_CLINIC_SCRIPT, XSS_LABEL, escape_report, main_report,
)

BROWSER_TIMEOUT = 25  # seconds, per browser session
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--no-first-run", "--no-default-browser-check", "--mute-audio", "--hide-scrollbars",
]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it): "
                "the browser checks of the weekly report are skipped")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser, or a skip; listed first in each test so that it skips before the reports are built."""
    return chromium_path()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # chromium's own process group (start_new_session)
            process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=5)


# --------------------------------------------------------------------------------------
# 1. The plain command line: a screenshot
# --------------------------------------------------------------------------------------

def test_screenshot_of_the_report(chromium, main_report, tmp_path):
    shot = tmp_path / "report.png"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1280,4000", "--enable-logging=stderr", "--v=0",
               (main_report.folder / "report.html").as_uri()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(process)
        pytest.fail(f"chromium --screenshot did not finish in {BROWSER_TIMEOUT} s")
    finally:
        _stop(process)
    assert shot.is_file(), f"no screenshot; chromium said:\n{stderr[-2000:]}"
    console = [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, f"the page logged to the console: {console}"
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 4000), im.size
        small = im.convert("RGB").resize((160, 500))
    colours = small.getcolors(maxcolors=1 << 16) or []
    assert len(colours) > 50, "the screenshot is (nearly) one colour"
    white = sum(n for n, c in colours if min(c) > 245)
    assert white < 0.97 * 160 * 500, "the screenshot is (nearly) blank"
    keep = os.environ.get("REPORT_SCREENSHOT_DIR")
    if keep:  # to look at it: REPORT_SCREENSHOT_DIR=/tmp/shots pytest tests/test_report_browser.py
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report_cli.png")


# --------------------------------------------------------------------------------------
# 2. The DevTools protocol: console, network, dialogs, image decoding
# --------------------------------------------------------------------------------------

class DevTools:
    """A minimal Chrome DevTools Protocol client over one page target."""

    def __init__(self, chromium: str, profile: Path) -> None:
        websocket = pytest.importorskip(
            "websocket", reason="websocket-client is not installed: the DevTools browser checks are skipped")
        self.process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.deadline = time.monotonic() + BROWSER_TIMEOUT
        self.events: list[dict] = []
        self._ids = itertools.count(1)
        try:
            port = self._port(profile)
            page = self._page(port)
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=5, suppress_origin=True)
        except BaseException:
            _stop(self.process)
            raise

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"browser session over {BROWSER_TIMEOUT} s")
        return left

    def _port(self, profile: Path) -> int:
        active = profile / "DevToolsActivePort"
        while True:
            self._remaining()
            if active.is_file():
                lines = active.read_text().split()
                if lines:
                    return int(lines[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.05)

    def _page(self, port: int) -> dict:
        while True:
            self._remaining()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    targets = json.loads(response.read())
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return pages[0]
            except OSError:
                pass
            time.sleep(0.05)

    def _receive(self) -> dict:
        self.ws.settimeout(max(0.05, min(5.0, self._remaining())))
        message = json.loads(self.ws.recv())
        if message.get("method") == "Page.javascriptDialogOpening":  # an alert() would block the page
            self.events.append(message)
            self.ws.send(json.dumps({"id": next(self._ids), "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": True}}))
            return {}
        return message

    def call(self, method: str, **params) -> dict:
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            message = self._receive()
            if "method" in message:
                self.events.append(message)
                if message["method"] == method:
                    return message

    def drain(self, seconds: float) -> None:
        """Collect events for a moment (late console messages, CSP reports)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ws.settimeout(max(0.05, end - time.monotonic()))
            try:
                message = json.loads(self.ws.recv())
            except Exception:  # noqa: BLE001 - websocket timeout
                break
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluation failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        _stop(self.process)


@pytest.fixture
def devtools(chromium, tmp_path):
    client = DevTools(chromium, tmp_path / "profile")
    yield client
    client.close()


PAGE_CHECKS = """
(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  const handlers = [];
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      if (a.name.toLowerCase().startsWith('on')) handlers.push(el.tagName + '.' + a.name);
    }
  }
  return {
    title: document.title,
    images: imgs.map((i, n) => ({alt: i.alt, scheme: i.currentSrc.split(':')[0], complete: i.complete,
                                 width: i.naturalWidth, height: i.naturalHeight, decoded: decoded[n],
                                 shownWidth: i.getBoundingClientRect().width})),
    resources: performance.getEntriesByType('resource').map(e => e.name),
    scripts: document.scripts.length,
    handlers: handlers,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    height: document.documentElement.scrollHeight,
    clinics: Array.from(document.querySelectorAll('#clinics ~ table tbody tr td:first-child'))
                  .map(td => td.textContent),
    conditions: Array.from(document.querySelectorAll('#conditions ~ table tbody tr td:first-child'))
                     .map(td => td.childNodes[0].textContent.trim()),
  };
})()
"""


def open_report(client: DevTools, html: Path) -> dict:
    for domain in ("Page", "Runtime", "Network", "Log"):
        client.call(f"{domain}.enable")
    client.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    client.call("Page.navigate", url=html.as_uri())
    client.wait_for("Page.loadEventFired")
    checks = client.evaluate(PAGE_CHECKS)
    client.drain(0.3)
    return checks


def problems(client: DevTools, html: Path) -> dict[str, list]:
    events = client.events
    found: dict[str, list] = {"dialogs": [], "exceptions": [], "console": [], "log": [], "requests": [],
                              "failed": []}
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Page.javascriptDialogOpening":
            found["dialogs"].append(params.get("message"))
        elif method == "Runtime.exceptionThrown":
            found["exceptions"].append(params.get("exceptionDetails", {}).get("text"))
        elif method == "Runtime.consoleAPICalled":
            found["console"].append((params.get("type"), [a.get("value") for a in params.get("args", [])]))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") in ("error", "warning"):
                found["log"].append((entry.get("source"), entry.get("text")))
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not (url == html.as_uri() or url.startswith("data:")):
                found["requests"].append(url)
        elif method == "Network.loadingFailed":
            found["failed"].append(params.get("errorText"))
    return {k: v for k, v in found.items() if v}


def test_report_loads_offline_with_every_image_decoded(chromium, main_report, devtools):
    html = main_report.folder / "report.html"
    checks = open_report(devtools, html)
    assert problems(devtools, html) == {}
    assert "2026-W47" in checks["title"]
    images = checks["images"]
    assert len(images) == len(FIGURES), images
    for image in images:
        assert image["scheme"] == "data" and image["complete"] and image["decoded"], image
        assert image["width"] > 300 and image["height"] > 150, image
        assert image["shownWidth"] > 300, f"a chart is drawn too small: {image}"
    assert all(name.startswith("data:") for name in checks["resources"]), checks["resources"]
    assert checks["scripts"] == 0 and not checks["handlers"]
    assert checks["scrollWidth"] <= checks["innerWidth"], \
        f"the page scrolls sideways at 1280 px ({checks['scrollWidth']} px wide)"
    # a full-page screenshot through the protocol, for people to look at
    shot = devtools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": 1280, "height": min(checks["height"], 16000), "scale": 1})
    data = base64.b64decode(shot["data"])
    assert data.startswith(b"\x89PNG") and len(data) > 50_000
    keep = os.environ.get("REPORT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / "report_full.png").write_bytes(data)


def test_markup_report_runs_no_script_and_logs_no_error(chromium, escape_report, devtools):
    html = escape_report.folder / "report.html"
    checks = open_report(devtools, html)
    found = problems(devtools, html)
    assert "dialogs" not in found, f"the page opened a dialog (injected script ran): {found['dialogs']}"
    assert found == {}, f"the page logged errors (a CSP report means injected markup was parsed): {found}"
    assert checks["scripts"] == 0 and not checks["handlers"], checks
    assert len(checks["images"]) == len(FIGURES), "an injected <img> became an element"
    assert XSS_CLINIC_SCRIPT in checks["clinics"] and XSS_CLINIC_IMG in checks["clinics"], checks["clinics"]
    assert XSS_LABEL in checks["conditions"], checks["conditions"]
    keep = os.environ.get("REPORT_SCREENSHOT_DIR")
    if keep:
        shot = devtools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": 1280, "height": min(checks["height"], 16000), "scale": 1})
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / "markup_full.png").write_bytes(base64.b64decode(shot["data"]))
