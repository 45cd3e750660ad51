"""Drive the demo page in the system's headless Chromium (selenium + chromedriver; nothing is downloaded): used by
the browser test and by ``scripts/demo_screenshot.py``. Also starts a demo server in a subprocess."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# the network is closed: no first-run, sync, component updates, QUIC or background requests
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars")


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) paths of the system Chromium (Debian: apt-get install chromium chromium-driver)."""
    browser = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def chromium_driver(width: int = 1400, height: int = 1000):
    """A headless Chromium webdriver with a fresh profile (removed by ``driver.quit()``)."""
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("no system chromium + chromedriver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    profile = tempfile.mkdtemp(prefix="dopd-chromium-")
    for a in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    close = driver.quit

    def quit_and_clean():
        close()
        shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args=(), port: int | None = None, timeout: float = 120.0, cwd: Path | None = None):
    """``danceopd demo`` in a subprocess; returns (process, url, seconds until the page answered)."""
    port = port or free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "danceopd.cli", "demo", "--port", str(port), *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"danceopd demo exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"danceopd demo did not answer within {timeout:.0f} s")
