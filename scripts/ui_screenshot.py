"""A screenshot of the front explorer on a tracked run, as a person sees it (headless Debian Chromium).

    python scripts/ui_screenshot.py --tracking-uri sqlite:///.pareto/mlflow.db --out docs/ui-hh_smol.png \
        --prompt "How do I get my kid to eat vegetables?"

Starts `pareto ui` on a free 127.0.0.1 port, opens the explore page (the latest pipeline run), asks the prompt at the
default λ, waits for the answer, and saves the picture. Needs `apt-get install chromium` and the dev extra
(playwright); Playwright drives that browser and never downloads its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompt", default=None, help="a question to ask (default: the page's example prompt)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the page and the answer")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "pareto.cli", "ui", "--port", str(port), "--tracking-uri",
                             args.tracking_uri], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stcore/health", 120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(args.timeout * 1000)
            page.goto(url)
            page.wait_for_selector(".js-plotly-plot .main-svg")
            if args.prompt:
                box = page.get_by_role("textbox").first  # the prompt (selectboxes are comboboxes)
                box.fill(args.prompt)
                box.press("Enter")
            page.get_by_role("button", name="Ask").click()
            page.wait_for_function("() => document.body.innerText.includes('answered by')")
            page.wait_for_timeout(1500)  # plotly's transition
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
