"""Screenshot of the demo page, and its measured start time and request latency (system headless Chromium).

    python scripts/demo_screenshot.py [--out docs/images/demo.png] [--tab local_edit] [--example 0]
        [--models world:local_edit world:edit world:global_edit] [--requests 5] [--threads 2]

Starts ``danceopd demo`` on a free port, submits the chosen tab's example (and --requests more with other seeds),
prints the start time (command start to first page answer) and the answer times the page reports, and saves a
screenshot of the page.
"""

from __future__ import annotations

import argparse
import statistics
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from danceopd.demo.browser import chromium_driver, start_server


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/images/demo.png")
    ap.add_argument("--tab", default="local_edit", choices=("t2i", "local_edit", "global_edit"))
    ap.add_argument("--text", default=None, help="prompt / instruction (default: the tab's first example)")
    ap.add_argument("--models", nargs="+", default=["world:local_edit", "world:edit", "world:global_edit"])
    ap.add_argument("--requests", type=int, default=5, help="further requests to time (seeds 1..N)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1250)
    a = ap.parse_args()

    proc, url, started = start_server(["--threads", str(a.threads), *sum((["--model", m] for m in a.models
                                                                          if not m.startswith("world:")), [])])
    print(f"start: {started:.1f} s (command start to the page answering)")
    d = chromium_driver(a.width, a.height)
    try:
        d.get(url)
        wait = WebDriverWait(d, 120)
        wait.until(lambda d: d.find_elements(By.ID, "t2i-run"))
        if a.tab != "t2i":
            title = {"local_edit": "Local edit", "global_edit": "Global edit"}[a.tab]
            d.find_element(By.XPATH, f"//button[@role='tab'][contains(., '{title}')]").click()
            wait.until(lambda d: d.find_element(By.ID, f"{a.tab}-run").is_displayed())
        for box in d.find_elements(By.CSS_SELECTOR, f"#{a.tab}-models input[type=checkbox]"):
            label = box.find_element(By.XPATH, "./..").text.strip()
            if (label in a.models) != box.is_selected():
                box.click()
        if a.text:
            t = d.find_element(By.CSS_SELECTOR, f"#{a.tab}-text textarea")
            t.clear()
            t.send_keys(a.text)
        times = []
        for seed in [0, *range(1, a.requests + 1)]:
            s = d.find_element(By.CSS_SELECTOR, f"#{a.tab}-seed input")
            s.clear()
            s.send_keys(str(seed))
            d.find_element(By.ID, f"{a.tab}-run").click()
            t0 = time.perf_counter()
            el = wait.until(lambda d, s=seed: _answer(d, a.tab, s))
            times.append((float(el.text.split()[-2]), time.perf_counter() - t0))
        s = d.find_element(By.CSS_SELECTOR, f"#{a.tab}-seed input")
        s.clear()
        s.send_keys("0")
        d.find_element(By.ID, f"{a.tab}-run").click()
        wait.until(lambda d: _answer(d, a.tab, 0))
        d.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        d.save_screenshot(a.out)
    finally:
        d.quit()
        proc.terminate()
        proc.wait(timeout=20)
    server = [t for t, _ in times]
    seen = [t for _, t in times]
    print(f"requests ({len(a.models)} models, {a.tab}): server {', '.join(f'{t:.2f}' for t in server)} s "
          f"(first = first request after start); median {statistics.median(server):.2f} s; click to result in the "
          f"browser median {statistics.median(seen):.2f} s")
    print(f"wrote {a.out}")


def _answer(d, tab, seed):
    """The result's timing line once the answer for ``seed`` is on the page."""
    for el in d.find_elements(By.CSS_SELECTOR, f"#{tab}-out #dopd-time"):
        try:
            if el.text.startswith(f"seed {seed};"):
                return el
        except Exception:  # replaced while reading
            pass
    return None


if __name__ == "__main__":
    main()
