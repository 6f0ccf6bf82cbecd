"""A headless Chromium driven over the DevTools protocol, with aiohttp's websocket client (ComfyUI's own
dependency): start it, evaluate JavaScript in the page, collect console messages, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import aiohttp

from comfy_harness import stop_process

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1600,1000",
]


def find_chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    """A DevTools call that failed, or a page condition that did not come true in time."""


class Chromium:
    """One Chromium with a fresh profile and one page; `close()` always ends it."""

    def __init__(self, executable: str) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="pdiff_chromium_"))
        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.loop = asyncio.new_event_loop()
        self.console: List[Dict[str, Any]] = []  # {"level", "text", "url"} of every console message and exception
        self._next_id = 0
        self._pending: Dict[int, asyncio.Future] = {}
        try:
            port = self._devtools_port()
            self.loop.run_until_complete(self._connect(port))
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                return int(found.group(1))
            if not line and self.process.poll() is not None:
                break
        raise BrowserError(f"chromium did not open its DevTools port (exit status {self.process.poll()})")

    async def _connect(self, port: int) -> None:
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as answer:
            pages = [t for t in await answer.json() if t["type"] == "page"]
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = self.loop.create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self._call(f"{domain}.enable")

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                params = data["params"]
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                self.console.append({"level": params["type"], "text": text, "url": ""})
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text", "")
                self.console.append({"level": "error", "text": text, "url": details.get("url", "")})
            elif data.get("method") == "Log.entryAdded":
                entry = data["params"]["entry"]
                self.console.append({"level": entry["level"], "text": entry["text"], "url": entry.get("url", "")})

    async def _call(self, method: str, **params: Any) -> Dict[str, Any]:
        self._next_id += 1
        future = self.loop.create_future()
        self._pending[self._next_id] = future
        await self._ws.send_str(json.dumps({"id": self._next_id, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, timeout=120)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer["result"]

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        return self.loop.run_until_complete(self._call(method, **params))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as JSON."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(
                f"{expression[:200]!r} threw: {details.get('exception', {}).get('description', details)}"
            )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for {what or expression[:200]}")
            self.loop.run_until_complete(asyncio.sleep(0.25))

    def pause(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def click(self, selector_js: str) -> None:
        """Click (real mouse events) the centre of the element the JavaScript expression returns."""
        box = self.evaluate(
            f"(() => {{ const e = {selector_js}; if (!e) return null; e.scrollIntoView({{block: 'center'}}); "
            "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"nothing to click: {selector_js}")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        try:
            if hasattr(self, "_ws"):
                self.loop.run_until_complete(self._ws.close())
            if hasattr(self, "_session"):
                self.loop.run_until_complete(self._session.close())
        finally:
            stop_process(self.process)
            self.loop.close()
            shutil.rmtree(self.profile, ignore_errors=True)


def errors(console: List[Dict[str, Any]], about: Callable[[str], bool]) -> List[Dict[str, Any]]:
    return [m for m in console if m["level"] in ("error", "assert") and about(m["text"] + " " + m["url"])]
