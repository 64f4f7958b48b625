"""Headless Chromium from Python: one `node tools/web/browser.mjs` process (one browser, one local server), to
which each call hands a page module and gets its JSON back. The tests' session fixture and the browser benches
share it.

    with Chromium() as browser:
        browser.run("/pages/probe.mjs")
        browser.run("/pages/embed.mjs", {"dtype": "fp32"}, mounts={"model": folder}, timeout=120)
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "tools" / "web"
CHROMIUM = Path("/usr/bin/chromium")


class BrowserError(RuntimeError):
    """A page module failed: a page error, a failed request, an exception it raised, or the timeout."""


class Chromium:
    def __init__(self, start_timeout: float = 60):
        node = shutil.which("node")
        missing = [what for what, ok in (
            ("node (Debian: apt-get install nodejs npm)", node),
            (f"{CHROMIUM} (bash setup.sh --test installs Debian's chromium)", CHROMIUM.exists()),
            ("tools/web/node_modules/puppeteer-core (bash setup.sh --test: npm ci)",
             (WEB / "node_modules" / "puppeteer-core").is_dir())) if not ok]
        if missing:
            raise RuntimeError("headless Chromium needs: " + "; ".join(missing))
        self._proc = subprocess.Popen([node, "browser.mjs"], cwd=WEB, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1)
        hello = self._read()
        self.origin, self.version = hello["origin"], hello["version"]

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(10)
            raise BrowserError(f"browser.mjs exited ({self._proc.returncode}): {self._proc.stderr.read()[-2000:]}")
        return json.loads(line)

    def run(self, module: str, args: dict | None = None, mounts: dict[str, Path] | None = None,
            timeout: float = 120, page: str | None = None, screenshot: Path | None = None) -> dict:
        """The JSON the page module's default export returns for `args`; `mounts` serves each directory at
        /m/<name>/; `page`: the URL path (or a local URL of another server) the module runs on (default: a blank
        page); `screenshot`: a PNG of the page written after the module returns. Raises BrowserError (with the
        page's console) when the page fails."""
        request = {"module": module, "args": args or {}, "timeout": timeout,
                   "mounts": {k: str(Path(v).resolve()) for k, v in (mounts or {}).items()},
                   **({"page": page} if page else {}), **({"screenshot": str(screenshot)} if screenshot else {})}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        answer = self._read()
        if not answer["ok"]:
            tail = "\n".join(answer["console"][-20:])
            raise BrowserError(f"{module}: {answer['error']}" + (f"\nconsole:\n{tail}" if tail else ""))
        self.console, self.bytes = answer["console"], answer["bytes"]
        return answer["result"]

    def close(self) -> None:
        """Ends the browser (closing stdin lets browser.mjs close it), then the process if it lingers."""
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
