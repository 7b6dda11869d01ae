"""The system map (/system) in a real Chromium (issue 17's "Must show").

Run by tests/tests/web_ui.rs against a system it started:
    python3 system_map.py --url URL --video sample.mp4 --out DIR --chromium /usr/bin/chromium \
        --admin-email E --admin-password P
Opens /system as the admin, sees every service and the `video` queue, uploads the video
in another tab and sees its messages move along the arrows; at 1280 and 1600 px wide, every
title and caption is readable in full, no box overlaps another and no arrow crosses a box,
before and after the blog's messages are seen (then the media and blog flows each lie on a
line); opens a service, a queue (dead letters) and a message (trace id). Screenshots in
DIR (flow.png: a second upload on the known map, the one in docs/system-map.png). Exits
non-zero on failure.
"""

import os
import sys
import time

from playwright.sync_api import expect, sync_playwright

import chromium

SERVICES = ["gateway", "auth", "media", "converter", "notification", "posts", "comments",
            "moderation", "query", "event-bus"]
LIVE_TIMEOUT = 90_000

# What a learner must be able to read on the map without clicking: for every box, its
# title and caption are not cut (no ellipsis, no line clamp, no overflow of the box), no
# two boxes overlap, and every box lies inside the map's visible frame (no sideways
# scrolling to find one). Returns a list of problems, empty when the map is readable.
GEOMETRY = """() => {
  const problems = [];
  const frame = document.querySelector('.map-scroll').getBoundingClientRect();
  const boxes = [...document.querySelectorAll('#system-map .box')];
  const name = (el) => el.closest('.box').dataset.key;
  for (const box of boxes) {
    for (const el of [box, ...box.querySelectorAll('.box-title, .box-caption, .box-badge')]) {
      if (el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1)
        problems.push(`${name(el)}: ${el.className} cut (${el.scrollWidth}x${el.scrollHeight} `
          + `in ${el.clientWidth}x${el.clientHeight}): ${el.textContent}`);
    }
    const r = box.getBoundingClientRect();
    if (r.left < frame.left - 1 || r.right > frame.right + 1 || r.top < frame.top - 1
        || r.bottom > frame.bottom + 1)
      problems.push(`${name(box)} outside the map's frame`);
  }
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i].getBoundingClientRect(), b = boxes[j].getBoundingClientRect();
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom)
        problems.push(`${name(boxes[i])} overlaps ${name(boxes[j])}`);
    }
  // An arrow runs between boxes, never across one (but those it joins).
  const within = (p, b, inset) => p.x > b.offsetLeft + inset && p.x < b.offsetLeft + b.offsetWidth - inset
    && p.y > b.offsetTop + inset && p.y < b.offsetTop + b.offsetHeight - inset;
  for (const arrow of document.querySelectorAll('#system-arrows path.arrow')) {
    const ends = arrow.dataset.edge.split('>');
    const length = arrow.getTotalLength();
    for (const box of boxes) {
      if (ends.includes(box.dataset.key)) continue;
      for (let at = 0; at <= length; at += 4) {
        if (within(arrow.getPointAtLength(at), box, 3)) {
          problems.push(`the arrow ${arrow.dataset.edge} crosses ${box.dataset.key}`);
          break;
        }
      }
    }
  }
  return problems;
}"""

# After traffic: the media flow on one line from the gateway, left to right; the blog's
# flow (comments → its queue → moderation) on a line of its own below it.
ROWS = """() => {
  const rect = (key) => document.querySelector(`#system-map .box[data-key="${key}"]`)
    .getBoundingClientRect();
  const problems = [];
  const line = (keys) => {
    const boxes = keys.map(rect);
    for (let i = 1; i < boxes.length; i++) {
      if (Math.abs(boxes[i].top - boxes[0].top) > 1)
        problems.push(`${keys[i]} is not on the line of ${keys[0]}`);
      if (boxes[i].left <= boxes[i - 1].right)
        problems.push(`${keys[i]} is not right of ${keys[i - 1]}`);
    }
    return boxes;
  };
  const media = line(['service:gateway', 'service:media', 'queue:video', 'service:converter',
                      'queue:notification', 'service:notification']);
  const blog = line(['service:comments', 'queue:moderation', 'service:moderation']);
  if (blog[0].top < media[0].bottom) problems.push('the blog is not below the media flow');
  return problems;
}"""


def readable(page, shot, label):
    """Every title and caption readable, no box over another, at 1600 and 1280 wide."""
    print(f"step: every title and caption readable, no box over another ({label} map)",
          flush=True)
    for width in (1280, 1600):
        page.set_viewport_size({"width": width, "height": 1000})
        # The map lays itself out again on a resize; wait until it is readable (or
        # report what is not, after the wait).
        try:
            page.wait_for_function(f"() => ({GEOMETRY})().length === 0", timeout=5_000)
        except Exception:  # noqa: BLE001 — the problems are the report
            pass
        problems = page.evaluate(GEOMETRY)
        shot(page, f"map-{label}-{width}")
        assert not problems, f"{label} map at {width} px wide: " + "; ".join(problems)


def main():
    args = chromium.arguments()
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
        browser = chromium.launch(p, args)
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
            # What the map was drawn from, beside the screenshots (to reproduce a layout).
            view = page.evaluate("""async () => (await fetch('/admin/system', {headers:
                {authorization: 'Bearer ' + sessionStorage.getItem('flotilla-token')}})).text()""")
            with open(os.path.join(args.out, "system.json"), "w", encoding="utf-8") as file:
                file.write(view)

            readable(page, shot, "fresh")

            print("step: upload in another tab; the messages move", flush=True)
            page.evaluate("""() => { window.__dots = []; window.__legs = [];
                new MutationObserver((records) => { for (const r of records)
                  for (const n of r.addedNodes) if (n.classList && n.classList.contains('dot'))
                    { window.__dots.push(n.dataset.routingKey);
                      window.__legs.push(n.dataset.routingKey + ' ' + n.dataset.edge); } })
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

            print("step: a post and a comment draw the blog's flow", flush=True)
            other.get_by_label("Title", exact=True).fill("Hello from the system map")
            other.get_by_role("button", name="Create post", exact=True).click()
            post = other.locator("article.post", has_text="Hello from the system map")
            post.get_by_label("Comment", exact=True).fill("What a lovely map")
            post.get_by_role("button", name="Comment", exact=True).click()
            expect(post.locator(".comment", has_text="What a lovely map").locator(".chip")).to_have_text(
                "approved", timeout=LIVE_TIMEOUT)
            # Publishers are known once seen: comments → its queue → moderation → the
            # decision's queue, which comments consumes (an arrow back).
            for edge in ["service:comments>queue:moderation", "queue:moderation>service:moderation",
                         "service:moderation>queue:comments", "queue:comments>service:comments"]:
                expect(page.locator(f'#system-arrows [data-edge="{edge}"]')).to_have_count(
                    1, timeout=LIVE_TIMEOUT)
            # The query service follows the event log: an arrow from event-bus, and the
            # post's event travels along it once the log has it.
            expect(page.locator('#system-arrows [data-edge="service:event-bus>service:query"]')).to_have_count(
                1, timeout=LIVE_TIMEOUT)
            page.wait_for_function(
                "() => window.__legs.includes('blog.PostCreated service:event-bus>service:query')",
                timeout=LIVE_TIMEOUT)
            readable(page, shot, "traffic")
            for width in (1280, 1600):
                page.set_viewport_size({"width": width, "height": 1000})
                time.sleep(0.5)  # the resize's new layout
                problems = page.evaluate(ROWS)
                assert not problems, f"at {width} px wide: " + "; ".join(problems)

            print("step: a second upload on the known map (docs/system-map.png)", flush=True)
            page.evaluate("() => { window.__dots.length = 0; }")
            other.locator("#file").set_input_files(args.video)
            other.get_by_role("button", name="Upload", exact=True).click()
            page.wait_for_function(
                "() => window.__dots.includes('mp3')", timeout=LIVE_TIMEOUT)
            time.sleep(0.3)
            shot(page, "flow")
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
