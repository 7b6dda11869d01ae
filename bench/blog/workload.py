#!/usr/bin/env python3
"""The blog workload of bench/blog.sh, run the same way against any blog behind one origin
(Flotilla's gateway, or nginx in front of the course's original Node services).

    workload.py BASE_URL --seconds S --samples N --races R --clients C

Prints one JSON object (the figures of this run) on stdout; progress on stderr. Phases, in
this order, on a fresh system:

1. event latency, SAMPLES sequential samples: (a) `POST /posts/create` until the post is
   in `GET /posts`, (b) `POST /posts/:id/comments` (on that post) until the comment is in
   `GET /posts` with a moderated status (approved/rejected); the view is polled every
   0.5 ms over one kept-alive connection (the same for both systems);
2. create-then-comment races: RACES × (create a post, comment on it at once), CLIENTS at a
   time; then the view is read until it stops changing (or every comment is there) and
   the comments that got their 201 but are not in `GET /posts` are counted as lost;
3. reads: wrk, CLIENTS connections, `GET /posts` (the view now holds RACES + SAMPLES
   posts) for SECONDS;
4. creates: wrk, CLIENTS connections, `POST /posts/create` with a JSON body (a Lua
   script sets method, body and header) for SECONDS; then the view is read every 0.5 s
   until it holds every created post (or stops growing), which gives the rate at which
   posts were created *and* made visible — a system whose consumers fall behind its
   writes answers creates faster than it can carry them through.

wrk is the client for throughput (python threads cannot saturate a fast server); its
non-2xx answers and socket errors are reported, not hidden.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse

# Every wait has a bound, so a system that loses an event makes a slow sample, never a hang.
VISIBLE_TIMEOUT = 10.0
SETTLE_QUIET = 2.0
SETTLE_TIMEOUT = 30.0


class Client:
    """One kept-alive HTTP/1.1 connection to the origin (reconnects if the server closes)."""

    def __init__(self, base):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port or 80
        self.conn = None

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, payload
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, body=None):
        status, payload = self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {payload[:200]!r}")
        return json.loads(payload)


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summary(values):
    values = sorted(values)
    return {
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": values[-1] if values else None,
        "samples": len(values),
    }


def wait_until(client, predicate):
    """Polls GET /posts until predicate(view) holds; the time it held, or None on timeout."""
    deadline = time.perf_counter() + VISIBLE_TIMEOUT
    while time.perf_counter() < deadline:
        status, payload = client.call("GET", "/posts")
        if status == 200 and predicate(json.loads(payload)):
            return time.perf_counter()
        time.sleep(0.0005)
    return None


def comment_status(view, post_id, comment_id):
    post = view.get(post_id)
    if not post:
        return None
    for comment in post.get("comments", []):
        if comment.get("id") == comment_id:
            return comment.get("status")
    return None


def latency(base, samples):
    writer, reader = Client(base), Client(base)
    post_visible, comment_moderated, timeouts = [], [], 0
    for n in range(samples):
        t0 = time.perf_counter()
        post = writer.json("POST", "/posts/create", {"title": f"timed {n}"})
        seen = wait_until(reader, lambda view: post["id"] in view)
        if seen is None:
            timeouts += 1
        else:
            post_visible.append((seen - t0) * 1000)
        # Every other comment is one moderation rejects (the course's word "orange").
        content = f"comment {n} about an orange" if n % 2 else f"comment {n}"
        t0 = time.perf_counter()
        comments = writer.json("POST", f"/posts/{post['id']}/comments", {"content": content})
        ours = [c["id"] for c in comments if c.get("content") == content]
        if not ours:
            raise RuntimeError(f"the comment's answer does not hold it: {comments!r}")
        seen = wait_until(
            reader,
            lambda view: comment_status(view, post["id"], ours[-1]) in ("approved", "rejected"),
        )
        if seen is None:
            timeouts += 1
        else:
            comment_moderated.append((seen - t0) * 1000)
    return {
        "post_visible_ms": summary(post_visible),
        "comment_moderated_ms": summary(comment_moderated),
        "timeouts": timeouts,
    }


def races(base, count, clients):
    def race(n):
        client = Client(base)
        try:
            status, payload = client.call("POST", "/posts/create", {"title": f"race {n}"})
            if status != 201:
                return ("post_failed", None, None)
            post_id = json.loads(payload)["id"]
            content = f"race comment {n}"
            status, payload = client.call("POST", f"/posts/{post_id}/comments", {"content": content})
            if status != 201:
                return ("comment_failed", post_id, None)
            ids = [c["id"] for c in json.loads(payload) if c.get("content") == content]
            return ("ok", post_id, ids[-1] if ids else None)
        except (OSError, http.client.HTTPException, ValueError):
            return ("error", None, None)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(race, range(count)))
    elapsed = time.perf_counter() - started
    acknowledged = [(p, c) for kind, p, c in results if kind == "ok" and c]
    failed = {k: sum(1 for r in results if r[0] == k) for k in ("post_failed", "comment_failed", "error")}

    # Settle: read the view until every acknowledged comment is there, or until it has not
    # changed for SETTLE_QUIET seconds (the original never delivers what it lost).
    reader = Client(base)
    missing, last_change, last_missing = None, time.perf_counter(), None
    deadline = time.perf_counter() + SETTLE_TIMEOUT
    while time.perf_counter() < deadline:
        view = reader.json("GET", "/posts")
        missing = sum(1 for p, c in acknowledged if comment_status(view, p, c) is None)
        if missing == 0:
            break
        if missing != last_missing:
            last_missing, last_change = missing, time.perf_counter()
        elif time.perf_counter() - last_change > SETTLE_QUIET:
            break
        time.sleep(0.2)
    return {
        "races": count,
        "acknowledged": len(acknowledged),
        "lost": missing,
        "failed": failed,
        "seconds": round(elapsed, 2),
    }


WRK_LUA = """
wrk.method = "POST"
wrk.body = '{"title":"created by wrk"}'
wrk.headers["Content-Type"] = "application/json"
"""


def to_ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url, seconds, clients, lua=None):
    threads = min(2, clients)
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--latency", url]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua or "")
    try:
        if lua:
            command[1:1] = ["-s", script.name]
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script.name)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": to_ms(p50.group(1)) if p50 else None,
        "p99_ms": to_ms(p99.group(1)) if p99 else None,
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, socket.groups())) if socket else 0,
    }


def view_size(client):
    return timed_view_size(client)[0]


def timed_view_size(client):
    """The number of posts in the view, and when its answer had come (before this client
    decodes it: the decoding is the client's time, not the system's)."""
    status, payload = client.call("GET", "/posts")
    answered = time.perf_counter()
    return (len(json.loads(payload)) if status == 200 else None), answered


def creates(base, seconds, clients):
    """wrk's creates, then how long until the view holds them all."""
    reader = Client(base)
    before = view_size(reader) or 0
    started = time.perf_counter()
    result = wrk(f"{base}/posts/create", seconds, clients, WRK_LUA)
    created = result["requests"] - result["non_2xx"]
    expected, size = before + created, before
    last_size, last_change = None, time.perf_counter()
    deadline = time.perf_counter() + 30 * SETTLE_TIMEOUT
    answered = time.perf_counter()
    while time.perf_counter() < deadline:
        seen, answered = timed_view_size(reader)
        size = seen or size
        if size >= expected:
            break
        if size != last_size:
            last_size, last_change = size, time.perf_counter()
        elif time.perf_counter() - last_change > 5 * SETTLE_QUIET:
            break
        time.sleep(0.5)
    # Until the answer that held them all came.
    visible_after = answered - started
    result["visible"] = size - before
    result["visible_after_s"] = round(visible_after, 2)
    # Created and visible per second: the posts the view holds over the time until it held them.
    result["visible_rps"] = round((size - before) / visible_after, 1) if visible_after > 0 else 0.0
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--races", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--creates-only", action="store_true",
                        help="only the creates phase (for the client's own ceiling)")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the event latency samples (to compare two builds)")
    parser.add_argument("--creates-visible-only", action="store_true",
                        help="only the creates, and the time until the view holds them")
    args = parser.parse_args()
    base = args.base.rstrip("/")

    result = {}
    if args.creates_only:
        json.dump(wrk(f"{base}/posts/create", args.seconds, args.clients, WRK_LUA), sys.stdout)
        print()
        return
    if args.creates_visible_only:
        json.dump(creates(base, args.seconds, args.clients), sys.stdout)
        print()
        return
    print(f"  latency: {args.samples} samples", file=sys.stderr)
    result["latency"] = latency(base, args.samples)
    if args.latency_only:
        json.dump(result, sys.stdout)
        print()
        return
    print(f"  races: {args.races}, {args.clients} at a time", file=sys.stderr)
    result["races"] = races(base, args.races, args.clients)
    print(f"  reads: wrk -c{args.clients} {args.seconds}s", file=sys.stderr)
    result["reads"] = wrk(f"{base}/posts", args.seconds, args.clients)
    print(f"  creates: wrk -c{args.clients} {args.seconds}s", file=sys.stderr)
    result["creates"] = creates(base, args.seconds, args.clients)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
