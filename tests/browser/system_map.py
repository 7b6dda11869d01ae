"""The system map (/system) in a real Chromium (issue 17's "Must show").

Run by tests/tests/web_ui.rs against a system it started:
    python3 system_map.py --url URL --video sample.mp4 --out DIR --chromium /usr/bin/chromium \
        --admin-email E --admin-password P
Opens /system as the admin, sees every service and the `video` queue, uploads the video
in another tab and sees its messages move along the arrows; opens a service, a queue
(dead letters) and a message (trace id). Screenshots in DIR. Exits non-zero on failure.
"""

import argparse
import os
import sys
import time

from playwright.sync_api import expect, sync_playwright

SERVICES = ["gateway", "auth", "media", "converter", "notification", "posts", "comments",
            "moderation", "query", "event-bus"]
LIVE_TIMEOUT = 90_000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--admin-email", required=True)
    parser.add_argument("--admin-password", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    base = args.url.rstrip("/")
    errors = []

    def shot(page, name):
        path = os.path.join(args.out, f"{name}.png")
        page.screenshot(path=path, full_page=True)
        print(f"  screenshot {path}", flush=True)

    def login(page):
        page.get_by_label("Email", exact=True).fill(args.admin_email)
        page.get_by_label("Password", exact=True).fill(args.admin_password)
        page.get_by_role("button", name="Log in", exact=True).click()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium,
                                    args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        # Which request failed, beside the console line that only says it did.
        page.on("response", lambda r: r.status >= 500 and errors.append(f"{r.status} {r.request.method} {r.url}"))
        try:
            print("step: /system asks for an admin", flush=True)
            page.goto(base + "/system")
            expect(page.locator("#system-gate")).to_contain_text("admin")
            login(page)

            print("step: every service and the video queue", flush=True)
            for name in SERVICES:
                expect(page.locator(f'.box.service[data-key="service:{name}"]')).to_be_visible(
                    timeout=15_000)
            expect(page.locator('.box.queue[data-key="queue:video"]')).to_be_visible()
            expect(page.locator('.box.queue[data-key="queue:notification"] .box-title')).to_have_text("mp3")
            expect(page.locator('.box.service[data-key="service:converter"]')).to_contain_text(
                "1 instance")
            expect(page.locator("#connection")).to_have_text("Live")
            # A caption for learners on every box.
            for caption in page.locator(".box .box-caption").all():
                assert caption.inner_text().strip(), "a box without a caption"
            shot(page, "map")

            print("step: upload in another tab; the messages move", flush=True)
            page.evaluate("""() => { window.__dots = [];
                new MutationObserver((records) => { for (const r of records)
                  for (const n of r.addedNodes) if (n.classList && n.classList.contains('dot'))
                    window.__dots.push(n.dataset.routingKey); })
                .observe(document.getElementById('system-map'), {childList: true}); }""")
            other = context.new_page()
            other.goto(base + "/")
            login(other)
            expect(other.get_by_role("button", name="Log out", exact=True)).to_be_visible()
            other.locator("#file").set_input_files(args.video)
            other.get_by_role("button", name="Upload", exact=True).click()
            # The video message leaves media for the video queue ...
            page.wait_for_function(
                "() => window.__dots.includes('video')", timeout=LIVE_TIMEOUT)
            time.sleep(0.45)
            shot(page, "message-moving")
            # ... and the mp3 follows to notification.
            page.wait_for_function(
                "() => window.__dots.includes('mp3')", timeout=LIVE_TIMEOUT)
            time.sleep(0.3)
            shot(page, "mp3-moving")
            expect(page.locator("#system-log")).to_contain_text("mp3")
            expect(page.locator(".log-row.handled").first).to_be_visible(timeout=LIVE_TIMEOUT)
            expect(other.locator(".job").first).to_contain_text("done", timeout=LIVE_TIMEOUT)
            other.close()

            print("step: a service's details", flush=True)
            page.locator('.box.service[data-key="service:media"]').click()
            details = page.locator("#system-details")
            expect(details).to_contain_text("POST /upload")
            expect(details).to_contain_text("Instances")
            shot(page, "service-details")

            print("step: a queue's dead letters", flush=True)
            page.locator('.box.queue[data-key="queue:video"]').click()
            expect(details).to_contain_text("Dead letters")
            expect(details).to_contain_text("No dead letters")

            print("step: a message's trace", flush=True)
            page.locator("#system-log button.link").first.click()
            expect(details).to_contain_text("trace")
            trace = details.locator("#trace-id, a").first.inner_text()
            assert len(trace) == 32, f"trace id {trace!r}"
            shot(page, "message-details")

            print("step: nothing logged as an error", flush=True)
            assert not errors, f"console errors: {errors}"
        except Exception:
            shot(page, "failure")
            raise
        finally:
            browser.close()
    print("all system map checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 — reported to the Rust test
        print(f"FAILED: {error}", file=sys.stderr)
        raise
