#!/usr/bin/env bash
# The blog's read side under load, through the gateway of a release `flotilla up`, each
# figure beside a peer measured in the same run:
#  1. `GET /posts` (the course client's full map) with POSTS posts: req/s and p50/p99 with
#     wrk (-t2 -c32), against nginx (a worker per core, sendfile) serving the identical body
#     as a static file
#     — the floor for "answer these bytes over HTTP"; alternating, best of two runs each;
#  2. event end-to-end latency: `POST /posts/create` until the post is in `GET /posts`
#     (posts outbox → relay → bus → query view), p50/p99 over sequential samples, against
#     the synchronous part of the same requests (`POST /posts/create` until its 201).
# Prints a Markdown section for BENCHMARKS.md.
#   bench/blog/static.sh [POSTS] [DURATION_SECONDS] [SAMPLES]   (defaults 10000 10 300)
# Needs: nginx, wrk, python3, curl (apt), a release build (built here unless
# FLOTILLA_BINARY names one).
set -euo pipefail
cd "$(dirname "$0")/../.."
posts=${1:-10000}
duration=${2:-10}
samples=${3:-300}
work=$(mktemp -d)
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap 'stop_flotilla "$work"; nginx -p "$work" -c "$work/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$work"' EXIT
need_nginx_wrk
flotilla_binary
port=19201 nginx_port=19202
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start_flotilla_up $port "$work"
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
visible, created = [], []
for n in range(samples):
    t0 = time.perf_counter()
    post = call("POST", "/posts/create", {"title": f"timed {n}"})
    created.append((time.perf_counter() - t0) * 1000)
    while post["id"] not in call("GET", f"/posts?limit=1&after={newest}"):
        time.sleep(0.0005)
    visible.append((time.perf_counter() - t0) * 1000)
    newest = post["id"]
for series in (visible, created):
    series.sort()
pick = lambda s, q: s[min(len(s) - 1, int(q * len(s)))]
print(f"{len(visible)} {pick(visible, 0.5):.1f} {pick(visible, 0.99):.1f} {visible[-1]:.1f}"
      f" {pick(created, 0.5):.1f} {pick(created, 0.99):.1f}")
PY
read -r count p50 p99 worst c50 c99 <"$work/latency.txt"

# The peer serves exactly the bytes the gateway answers.
curl -fsS "$base/posts" >"$work/posts.json"
size=$(wc -c <"$work/posts.json")
cat >"$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:$nginx_port;
    location = /posts { default_type application/json; alias $work/posts.json; }
  }
}
NGINX
mkdir -p "$work/logs"
# nginx's workers run as an unprivileged user; mktemp's directory is private.
chmod 755 "$work"; chmod 644 "$work/posts.json"
nginx -p "$work" -c "$work/nginx.conf"
curl -fsS "http://127.0.0.1:$nginx_port/posts" | cmp -s - "$work/posts.json" || {
  echo "nginx does not serve the same body" >&2; exit 1
}

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; printf "%.2f", v}'; }
run_wrk() { # url -> "req/s p50_ms p99_ms errors"
  wrk -t2 -c32 -d"${duration}s" --latency "$1" >"$work/wrk.out" 2>&1
  local rps w50 w99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
  w50=$(awk '$1=="50%" {print $2}' "$work/wrk.out" | to_ms)
  w99=$(awk '$1=="99%" {print $2}' "$work/wrk.out" | to_ms)
  errors=$(grep -cE "Non-2xx|Socket errors" "$work/wrk.out" || true)
  echo "$rps $w50 $w99 $errors"
}
better() { awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," ");split(b,y," "); exit !(x[1]>y[1])}'; }

wrk -t2 -c32 -d2s "http://127.0.0.1:$nginx_port/posts" >/dev/null
wrk -t2 -c32 -d2s "$base/posts" >/dev/null
best_n="0 0 0 0"; best_f="0 0 0 0"
for _ in 1 2; do
  r=$(run_wrk "http://127.0.0.1:$nginx_port/posts"); better "$r" "$best_n" && best_n=$r
  r=$(run_wrk "$base/posts"); better "$r" "$best_f" && best_f=$r
done
read -r n_rps n50 n99 n_err <<<"$best_n"
read -r f_rps f50 f99 f_err <<<"$best_f"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }

cat <<MD
### The read side against a static file (\`bench/blog/static.sh\`)

\`bench/blog/static.sh $posts $duration $samples\`, release \`flotilla up\` (embedded bus, SQLite),
through the gateway, $(date -u '+%Y-%m-%d %H:%M') UTC, load average at the start $load_before
(2 cores shared with other builds: compare figures of one run with each other).

**\`GET /posts\`, the course client's full map of $posts posts ($((size / 1024)) KiB)**, wrk -t2 -c32
${duration}s, alternating, best of two runs each. Peer: nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (one worker per core, sendfile) serving
the identical body as a static file.

| server | requests/s | p50 | p99 | error lines |
|---|---:|---:|---:|---:|
| nginx, static file | $n_rps | $n50 ms | $n99 ms | $n_err |
| flotilla (gateway → query) | $f_rps | $f50 ms | $f99 ms | $f_err |
| **flotilla / nginx** | **$(ratio "$f_rps" "$n_rps")×** | $(ratio "$f50" "$n50")× | $(ratio "$f99" "$n99")× | |

**Event end-to-end latency**, $count sequential samples with $posts posts in the view: from
sending \`POST /posts/create\` until the post is in \`GET /posts\` (outbox → relay → embedded
bus → query view, polled with \`GET /posts?limit=1&after=…\`). Peer: the synchronous part
of the same requests, until the 201.

| measurement | p50 | p99 | max |
|---|---:|---:|---:|
| \`POST /posts/create\` → 201 | $c50 ms | $c99 ms | |
| \`POST /posts/create\` → visible in \`GET /posts\` | $p50 ms | $p99 ms | $worst ms |
| **visible / 201** | **$(ratio "$p50" "$c50")×** | **$(ratio "$p99" "$c99")×** | |
MD
