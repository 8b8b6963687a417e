"""Headless Chromium driven over the DevTools protocol on a pipe (no test dependency).

`--dump-dom` and `--screenshot` see a page once, at a moment Chromium picks; the live
page's tests need more: read what the page shows at chosen instants, in one JavaScript
evaluation (the text of an element and the pixels of the image under it, atomically),
and take a screenshot once the page has what it should. `--remote-debugging-pipe`
speaks the protocol as NUL-terminated JSON on file descriptors 3 (to Chromium) and 4
(from it): stdlib only, no WebSocket client.

CI installs chromium (Debian); without it, `Chromium(...)` skips the test with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


class Chromium:
    """One browser with one page; `with Chromium(profile, (w, h)) as page: page.open(url)`."""

    def __init__(self, profile: Path, size: tuple[int, int] = (1000, 800),
                 timeout: float = 60) -> None:
        exe = shutil.which("chromium")
        if not exe:
            pytest.skip("chromium not installed (CI installs it with apt-get)")
        self.timeout = timeout
        to_chrome, self._out = (_high(fd) for fd in os.pipe())
        self._in, from_chrome = (_high(fd) for fd in os.pipe())
        # bash puts the pipe ends on 3 and 4, where Chromium looks for them (a
        # preexec_fn would do it in Python, but is unsafe with the test's threads running)
        script = f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome}'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, exe, *FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
            pass_fds=(to_chrome, from_chrome), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf = b""
        self._id = 0
        self.session = ""

    def __enter__(self) -> Chromium:
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": page["targetId"], "flatten": True})["sessionId"]
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.call("Browser.close", page=False)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)

    def call(self, method: str, params: dict[str, Any] | None = None,
             page: bool = True) -> dict[str, Any]:
        """One protocol command (on the page's session unless `page=False`) -> its result."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buf:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not answer {method}")
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buf += chunk
            raw, _, self._buf = self._buf.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") != self._id:
                continue  # an event, or the reply of an earlier command
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply["result"]

    def open(self, url: str, timeout: float = 30) -> None:
        """Navigate to `url` and wait until it has loaded (its scripts have run)."""
        self.call("Page.navigate", {"url": url})
        self.wait_for(f"location.href === {json.dumps(url)} && "
                      "document.readyState === 'complete'", timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Evaluate until the value is truthy; the value, or a RuntimeError at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {expression}")
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        """The viewport as PNG bytes."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])


def _high(fd: int) -> int:
    """`fd` moved above 9: the shell's `3<&N 4>&M` must not overwrite one with the other."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def data_url_bytes(url: str) -> bytes:
    """The payload of a base64 `data:` URL (canvas.toDataURL)."""
    return base64.b64decode(url.split(",", 1)[1])
