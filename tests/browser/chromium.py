"""What the browser tests share: their command line and how Chromium is launched.

tests/tests/web_ui.rs runs each script as
    python3 SCRIPT --url URL --video sample.mp4 --out DIR --chromium /usr/bin/chromium \
        --admin-email E --admin-password P
"""

import argparse
import os


def arguments():
    """The parsed command line; the screenshot directory (--out) exists afterwards."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--admin-email", required=True)
    parser.add_argument("--admin-password", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    return args


def launch(playwright, args):
    """Debian's Chromium (no browser downloaded by Playwright), headless; no sandbox and
    no GPU, as containers and CI runners have neither."""
    return playwright.chromium.launch(
        executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"]
    )
