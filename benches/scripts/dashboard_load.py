"""Times the dashboard in headless Chromium (Playwright, from `.venv`): the first load of the
year view, then each range. Run against an agent serving a ledger from `year_ledger.py`:
`benches/results/2026-12-01-dashboard.md`.

usage: .venv/bin/python dashboard_load.py http://ADMIN_ADDR TOKEN [CHROMIUM]
"""

import json
import sys
import time

from playwright.sync_api import sync_playwright


def main():
    url, token = sys.argv[1], sys.argv[2]
    chromium = sys.argv[3] if len(sys.argv) > 3 else "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/dashboard/#range=365d")
        page.fill("#token", token)
        started = time.monotonic()
        page.click("#login-form button")
        page.wait_for_selector("body[data-loaded='365d']")
        out = {"first_load_365d_s": round(time.monotonic() - started, 3)}
        for r in ["24h", "30d", "month", "365d"]:
            started = time.monotonic()
            page.click(f"#ranges button[data-range='{r}']")
            page.wait_for_selector(f"body[data-loaded='{r}']")
            out[f"switch_{r}_s"] = round(time.monotonic() - started, 3)
        print(json.dumps(out))
        browser.close()


if __name__ == "__main__":
    main()
