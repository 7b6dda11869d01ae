#!/usr/bin/env bash
# The blog's read side under load, through the gateway of a release `flotilla up`:
#  1. `GET /posts` (the course client's full map) with 10,000 posts: req/s and latency
#     percentiles with wrk (-t2 -c32);
#  2. event end-to-end latency: `POST /posts/create` until the post is in `GET /posts`
#     (posts outbox → relay → bus → query view), p50/p99 over sequential samples.
# Prints a Markdown section for BENCHMARKS.md.
#   bench/blog.sh [POSTS] [DURATION_SECONDS] [SAMPLES]   (defaults 10000 10 300)
set -euo pipefail
cd "$(dirname "$0")/.."
posts=${1:-10000}
duration=${2:-10}
samples=${3:-300}
work=$(mktemp -d)
trap 'kill $(cat "$work/flotilla.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
cargo build --release -q -p flotilla
target_dir=${CARGO_TARGET_DIR:-target}
port=19201
# The per-client rate limit is for the internet, not for a benchmark client.
FLOTILLA_GATEWAY_RATE_LIMIT=0 RUST_LOG=warn "$target_dir/release/flotilla" up \
  --listen 127.0.0.1:$port --data-dir "$work/data" >"$work/stdout" 2>"$work/stderr" &
echo $! >"$work/flotilla.pid"
until grep -q ready "$work/stdout" 2>/dev/null; do sleep 0.2; done
base=http://127.0.0.1:$port

python3 - "$base" "$posts" "$samples" >"$work/latency.txt" <<'PY'
import concurrent.futures, json, sys, time, urllib.request
base, posts, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())

start = time.time()
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda n: call("POST", "/posts/create", {"title": f"post {n}"}), range(posts)))
while len(call("GET", "/posts")) < posts:
    time.sleep(0.2)
print(f"seeded {posts} posts in {time.time() - start:.1f} s", file=sys.stderr)

# Ids are time-ordered and this is the only writer: the new post is the first after the
# newest one seen, so one small page shows whether it has arrived.
newest = max(call("GET", "/posts"))
latencies = []
for n in range(samples):
    t0 = time.perf_counter()
    post = call("POST", "/posts/create", {"title": f"timed {n}"})
    while post["id"] not in call("GET", f"/posts?limit=1&after={newest}"):
        time.sleep(0.0005)
    latencies.append((time.perf_counter() - t0) * 1000)
    newest = post["id"]
latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
print(f"{len(latencies)} {pick(0.5):.1f} {pick(0.99):.1f} {latencies[-1]:.1f}")
PY
read -r count p50 p99 worst <"$work/latency.txt"
size=$(curl -s "$base/posts" | wc -c)
wrk -t2 -c32 -d"${duration}s" --latency "$base/posts" >"$work/wrk.txt"
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
w50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
w99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
errors=$(grep -E "Non-2xx|Socket errors" "$work/wrk.txt" || true)

cat <<MD
## Blog (\`bench/blog.sh\`)

Release \`flotilla up\` (embedded bus, SQLite), through the gateway, $(date -u +%Y-%m-%d).

| measurement | result |
|---|---|
| \`GET /posts\` full map, $posts posts ($((size / 1024)) KiB), wrk -t2 -c32 ${duration}s | $rps req/s, p50 $w50, p99 $w99 ${errors:+($errors)} |
| \`POST /posts/create\` → post visible in \`GET /posts\`, $count sequential samples | p50 $p50 ms, p99 $p99 ms, max $worst ms |
MD
