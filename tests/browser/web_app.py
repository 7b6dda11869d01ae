"""The web app in a real Chromium, as a person would use it (issue 16's "Must show").

Run by tests/tests/web_ui.rs against a system it started:
    python3 web_app.py --url URL --video sample.mp4 --out DIR --chromium /usr/bin/chromium \
        --admin-email E --admin-password P
Each step saves a screenshot in DIR. Exits non-zero (with the failed step) on any failure.
"""

import base64
import json
import os
import re
import sys
import threading
import time
import urllib.request
from urllib.parse import urlsplit

from playwright.sync_api import expect, sync_playwright

import chromium

LIVE_TIMEOUT = 90_000  # ms: a conversion on a busy 2-core machine


def main():
    args = chromium.arguments()
    base = args.url.rstrip("/")
    origin = urlsplit(base)
    origin = f"{origin.scheme}://{origin.netloc}"

    with sync_playwright() as p:
        browser = chromium.launch(p, args)
        run = Run(browser, base, origin, args)
        try:
            run.all()
        except Exception:
            run.shot("failure")
            raise
        finally:
            browser.close()
    print("all browser checks passed")


class Run:
    def __init__(self, browser, base, origin, args):
        self.base = base
        self.origin = origin
        self.args = args
        self.step = "start"
        self.foreign = []  # requests that tried to leave the origin
        self.console_errors = []
        self.requests = []
        self.allowed_errors = re.compile(r"$^")  # nothing, unless a step expects some
        self.context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        self.context.route("**/*", self.guard_origin)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.page.on("console", self.on_console)
        self.page.on("pageerror", lambda e: self.console_errors.append((self.step, str(e))))
        self.page.on("request", lambda r: self.requests.append((time.monotonic(), r.url)))
        self.navigations = 0
        self.page.on(
            "framenavigated",
            lambda f: setattr(self, "navigations", self.navigations + 1)
            if f == self.page.main_frame
            else None,
        )
        self.shots = 0

    def guard_origin(self, route):
        url = route.request.url
        if url.startswith(self.origin + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def on_console(self, message):
        if message.type == "error" and not self.allowed_errors.search(message.text):
            self.console_errors.append((self.step, message.text))

    def shot(self, name, full_page=True):
        self.shots += 1
        path = os.path.join(self.args.out, f"{self.shots:02d}-{name}.png")
        self.page.screenshot(path=path, full_page=full_page)
        print(f"  screenshot {path}")

    def begin(self, step):
        self.step = step
        print(f"step: {step}", flush=True)

    def all(self):
        page = self.page
        email = f"browser-{int(time.time() * 1000)}@example.com"
        password = "correct horse battery"

        self.begin("the page loads and goes live")
        page.goto(self.base + "/")
        expect(page.locator("#connection")).to_have_text("Live")
        print(f"  requests to load the page and go live: {len(self.requests)}")
        expect(page.get_by_text("Log in or sign up to turn your videos into MP3s")).to_be_visible()
        self.shot("home")

        self.begin("sign up")
        page.get_by_label("Email", exact=True).fill(email)
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Sign up", exact=True).click()
        expect(page.get_by_role("button", name="Log out", exact=True)).to_be_visible()
        expect(page.locator("#login-form")).to_be_hidden()
        assert page.get_by_label("Password", exact=True).input_value() == "", "password lingers"
        expect(page.locator("#account-email")).to_have_text(email)
        self.shot("signed-up")

        self.begin("log out, then log in")
        page.get_by_role("button", name="Log out", exact=True).click()
        expect(page.get_by_role("button", name="Log in", exact=True)).to_be_visible()
        assert page.get_by_label("Password", exact=True).input_value() == "", "password lingers"
        page.get_by_label("Email", exact=True).fill(email)
        page.get_by_label("Password", exact=True).fill("wrong password!")
        # Chromium logs the refused login's 401 itself; nothing else may be logged.
        self.allowed_errors = re.compile(r"status of 401")
        page.get_by_role("button", name="Log in", exact=True).click()
        expect(page.locator("#account-feedback.error")).to_be_visible()
        self.allowed_errors = re.compile(r"$^")
        assert page.get_by_label("Password", exact=True).input_value() == ""
        # Keyboard only: from Email, Tab to Password, Enter logs in (the form's first button).
        page.get_by_label("Email", exact=True).focus()
        page.keyboard.press("Tab")
        page.keyboard.type(password)
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Log out", exact=True)).to_be_visible()
        expect(page.locator("#login-form")).to_be_hidden()

        self.begin("upload a video and watch it reach done without a reload")
        navigations = self.navigations
        sample = os.path.join(self.args.out, "sample.mp4")
        with open(self.args.video, "rb") as src, open(sample, "wb") as dst:
            dst.write(src.read())
        page.get_by_label("Video", exact=True).set_input_files(sample)
        upload = page.get_by_role("button", name="Upload", exact=True)
        # The button is disabled from the click until the answer: no double submission.
        page.evaluate(
            """() => { window.__uploadStates = [];
                 new MutationObserver(() => window.__uploadStates.push(
                   document.getElementById('upload').disabled))
                 .observe(document.getElementById('upload'), {attributes: true}); }"""
        )
        upload.click()
        expect(page.locator("#upload-feedback.success")).to_contain_text("Uploaded sample.mp4")
        assert True in page.evaluate("window.__uploadStates"), "Upload was not disabled while sending"
        job = page.locator(".job", has_text="sample.mp4")
        expect(job).to_have_count(1)
        self.shot("uploading")
        expect(job.locator(".chip")).to_have_text("done", timeout=LIVE_TIMEOUT)
        expect(job.locator(".job-facts")).to_contain_text(re.compile(r"\d+(\.\d)? (KB|MB) · 0:0\d"))
        assert self.navigations == navigations, "the page reloaded"
        self.shot("converted")

        self.begin("download the MP3, named after the video")
        with page.expect_download() as info:
            job.get_by_role("button", name="Download", exact=True).click()
        download = info.value
        assert download.suggested_filename == "sample.mp3", download.suggested_filename
        saved = os.path.join(self.args.out, "downloaded.mp3")
        download.save_as(saved)
        with open(saved, "rb") as f:
            head = f.read(3)
        assert head == b"ID3" or (head[0] == 0xFF and head[1] & 0xE0 == 0xE0), head

        self.begin("a file that is not media fails, with its reason")
        notes = os.path.join(self.args.out, "notes.txt")
        with open(notes, "w") as f:
            f.write("this is not a video\n" * 50)
        page.get_by_label("Video", exact=True).set_input_files(notes)
        upload.click()
        failed = page.locator(".job", has_text="notes.txt")
        expect(failed.locator(".chip")).to_have_text("failed", timeout=LIVE_TIMEOUT)
        expect(failed.locator(".job-reason")).not_to_be_empty()
        reason = failed.locator(".job-reason").inner_text()
        print(f"  failure reason shown: {reason}")
        assert self.navigations == navigations, "the page reloaded"
        self.shot("failed-upload")

        self.begin("create a post and comment; moderation decisions appear live")
        title = page.get_by_label("Title", exact=True)
        title.fill("Hello from the browser")
        # The limit is shown before sending (grouped as the browser's locale groups it).
        expect(page.locator("#post-title-count")).to_have_text(re.compile(r"^22 / 10\D?000$"))
        page.get_by_role("button", name="Create post", exact=True).click()
        post = page.locator("article.post", has_text="Hello from the browser")
        expect(post).to_have_count(1)
        post.get_by_label("Comment", exact=True).fill("What a lovely post")
        post.get_by_role("button", name="Comment", exact=True).click()
        approved = post.locator(".comment", has_text="What a lovely post")
        expect(approved.locator(".chip")).to_have_text("approved")
        post.get_by_label("Comment", exact=True).fill("I prefer orange juice")
        post.get_by_role("button", name="Comment", exact=True).click()
        rejected = post.locator(".comment-rejected")
        expect(rejected.locator(".chip")).to_have_text("rejected")
        expect(rejected).to_contain_text("Rejected by moderation")
        assert self.navigations == navigations, "the page reloaded"
        self.shot("blog")

        self.begin("a comment being typed survives 10 s of live updates by another client")
        box = post.get_by_label("Comment", exact=True)
        box.click()
        typed = "I am writing this slowly, "
        box.press_sequentially(typed, delay=20)
        posts_before = page.locator("article.post").count()
        stop = threading.Event()
        made = []
        other = threading.Thread(target=self.other_client, args=(stop, made))
        other.start()
        deadline = time.monotonic() + 10
        more = "and nothing erases it."
        i = 0
        while time.monotonic() < deadline:
            if i < len(more):
                page.keyboard.type(more[i])
                i += 1
            page.wait_for_timeout(300)
        stop.set()
        other.join()
        page.keyboard.type(more[i:])
        assert len(made) >= 5, f"the other client made only {made}"
        expect(page.locator("article.post")).to_have_count(posts_before + len([m for m in made if m == "post"]))
        assert box.input_value() == typed + more, box.input_value()
        assert page.evaluate("document.activeElement.id") == box.get_attribute("id"), "focus was lost"
        caret = page.evaluate("document.activeElement.selectionStart")
        assert caret == len(typed + more), caret
        print(f"  the other client made {len(made)} changes; the text and focus are intact")
        self.shot("typing-survives")

        self.begin("a long title causes no horizontal scroll")
        long_word = "Supercalifragilistic" * 20  # 400 characters, no space
        title.fill(long_word)
        page.get_by_role("button", name="Create post", exact=True).click()
        expect(page.locator("article.post", has_text=long_word[:50])).to_have_count(1)
        self.assert_no_horizontal_scroll()
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        self.assert_no_horizontal_scroll()
        page.locator("article.post", has_text=long_word[:50]).scroll_into_view_if_needed()
        self.shot("phone-390px", full_page=False)
        page.set_viewport_size({"width": 1280, "height": 900})

        self.begin("the admin sees every user's jobs, with the owner")
        page.get_by_role("button", name="Log out", exact=True).click()
        page.get_by_label("Email", exact=True).fill(self.args.admin_email)
        page.get_by_label("Password", exact=True).fill(self.args.admin_password)
        page.get_by_role("button", name="Log in", exact=True).click()
        expect(page.locator("#owner-note")).to_be_visible()
        expect(page.locator(".job", has_text="sample.mp4").locator(".job-owner")).to_have_text(
            f"by {email}"
        )
        self.shot("admin")

        self.begin("idle for 30 s makes at most a handful of requests")
        page.wait_for_timeout(1000)
        start = time.monotonic()
        page.wait_for_timeout(30_000)
        idle = [url for (t, url) in self.requests if t >= start]
        print(f"  requests while idle for 30 s: {len(idle)} {idle}")
        assert len(idle) <= 3, idle

        self.begin("an invalid token returns the user to login with a message")
        self.allowed_errors = re.compile(r"status of 401")
        # Well-formed, unexpired by its claims, but not signed by auth: the server refuses it.
        forged = ".".join(
            base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
            for part in (
                {"alg": "EdDSA", "typ": "JWT"},
                {"sub": "x", "username": "me@example.com", "admin": False, "exp": 4102444800},
            )
        ) + ".c2lnbmF0dXJl"
        page.evaluate("token => sessionStorage.setItem('flotilla-token', token)", forged)
        page.reload()
        expect(page.get_by_role("button", name="Log in", exact=True)).to_be_visible()
        expect(page.locator("#banner.error")).to_contain_text("log in again")
        expect(page.locator("#media")).to_be_hidden()
        self.shot("session-ended")
        self.allowed_errors = re.compile(r"$^")

        self.begin("the server sends what the page needs: favicon, CSP, cache validators")
        response = page.request.get(self.base + "/ui/favicon.svg")
        assert response.status == 200 and response.headers["content-type"].startswith("image/svg+xml")
        response = page.request.get(self.base + "/")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, csp
        assert "etag" in response.headers

        self.begin("the server goes away: the page says so and keeps trying")
        page.get_by_label("Email", exact=True).fill("still typing@example.com")
        # tests/tests/web_ui.rs stops the system when this file appears.
        open(os.path.join(self.args.out, "stop-now"), "w").close()
        self.allowed_errors = re.compile(r"ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET")
        expect(page.locator("#connection")).to_have_text(re.compile("Reconnecting|unreachable"), timeout=30_000)
        expect(page.locator("#connection")).to_have_text("Server unreachable — retrying", timeout=30_000)
        expect(page.locator("#offline")).to_be_visible()
        assert page.get_by_label("Email", exact=True).input_value() == "still typing@example.com"
        self.shot("server-unreachable")

        self.begin("nothing left the origin; no console errors")
        assert not self.foreign, f"requests left the origin: {self.foreign}"
        assert not self.console_errors, f"console errors: {self.console_errors}"

    def assert_no_horizontal_scroll(self):
        widths = self.page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], f"horizontal scroll: {widths}"

    def other_client(self, stop, made):
        """Another visitor: posts and comments over HTTP while this one types."""
        post_id = None
        n = 0
        while not stop.is_set():
            n += 1
            if post_id is None or n % 3 == 0:
                created = call(self.base + "/posts/create", {"title": f"Another visitor's post {n}"})
                post_id = created["id"]
                made.append("post")
            else:
                call(self.base + f"/posts/{post_id}/comments", {"content": f"comment {n}"})
                made.append("comment")
            stop.wait(0.7)


def call(url, body):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        raise
