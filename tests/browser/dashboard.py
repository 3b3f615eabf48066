"""Drives the agent's web dashboard in a real headless Chromium (Playwright) for
tests/e2e/dashboard.rs: logs in with a wrong and then the right admin token, opens the "This
month" view, and prints what the page shows as one JSON object on stdout. Screenshots go to
OUT_DIR.

usage: dashboard.py ADMIN_URL TOKEN OUT_DIR CHROMIUM
"""

import json
import sys
import time

from playwright.sync_api import sync_playwright


def rows(page, selector):
    return page.eval_on_selector_all(
        selector,
        """rows => rows.filter(r => r.dataset.name !== undefined).map(r => ({
            name: r.dataset.name,
            requests: r.querySelector('.requests') ? r.querySelector('.requests').textContent : null,
            cost_usd: r.querySelector('.cost') ? Number(r.querySelector('.cost').dataset.usd) : null,
        }))""",
    )


def main():
    admin_url, token, out_dir, chromium = sys.argv[1:5]
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"console {m.type}: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        outside = []
        page.on("request", lambda r: r.url.startswith(admin_url) or outside.append(r.url))

        # The page alone, without a token: the login form.
        started = time.monotonic()
        page.goto(admin_url + "/dashboard")
        page.wait_for_selector("#login-form", state="visible")
        page.screenshot(path=f"{out_dir}/login.png")

        # A wrong token is refused and asked again.
        page.fill("#token", "not-the-token")
        page.click("#login-form button")
        page.wait_for_function("document.querySelector('#login-error').textContent.length > 0")
        refused = page.inner_text("#login-error")
        problems[:] = [x for x in problems if "401" not in x]

        page.fill("#token", token)
        started = time.monotonic()
        page.click("#login-form button")
        page.wait_for_selector("body[data-loaded='30d']")
        first_load_s = time.monotonic() - started

        page.click("#ranges button[data-range='month']")
        page.wait_for_selector("body[data-loaded='month']")
        page.screenshot(path=f"{out_dir}/month-by-team.png", full_page=True)
        shown = {
            "refused_message": refused,
            "login_hidden": page.is_hidden("#login"),
            "first_load_s": first_load_s,
            "period": page.inner_text("#period"),
            "total_cost_usd": float(page.get_attribute("#total-cost", "data-usd")),
            "total_requests": page.inner_text("#total-requests"),
            "teams": rows(page, "#spend-table tbody tr"),
            "keys": rows(page, "#top-keys tbody tr"),
            "sessions": rows(page, "#top-sessions tbody tr"),
            "chart_bars": page.eval_on_selector_all("#spend-chart rect", "r => r.length"),
            "budgets": page.eval_on_selector_all(
                ".budget",
                "bs => bs.map(b => ({name: b.dataset.name, used: Number(b.dataset.used), "
                "limit: Number(b.dataset.limit), forecast: Number(b.dataset.forecast)}))",
            ),
            "findings": page.eval_on_selector_all(
                "#findings tbody tr[data-kind]",
                "rs => rs.map(r => ({kind: r.dataset.kind, subject: r.children[1].textContent}))",
            ),
            "findings_period": page.inner_text("#findings-period"),
            "audit": page.eval_on_selector_all("#audit tbody tr[data-action]", "rs => rs.map(r => r.dataset.action)"),
            "live_rps": page.inner_text("#live-rps"),
        }
        page.click("#dims button[data-by='model']")
        shown["models"] = rows(page, "#spend-table tbody tr")
        page.screenshot(path=f"{out_dir}/month-by-model.png", full_page=True)

        # The token lives in this tab only: a new context is asked for it again.
        other = browser.new_context().new_page()
        other.goto(admin_url + "/dashboard/")
        other.wait_for_selector("#login-form", state="visible")
        shown["new_tab_asks_again"] = True
        browser.close()
    shown["problems"] = problems
    shown["outside_requests"] = outside
    print(json.dumps(shown))


if __name__ == "__main__":
    main()
