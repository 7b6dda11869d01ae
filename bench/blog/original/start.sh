#!/usr/bin/env bash
# Starts the course's blog (the recreation in this directory: five Node services) and the
# nginx origin in front of it, the way bench/blog.sh runs it beside Flotilla.
#   bench/blog/original/start.sh WORK_DIR ORIGIN_PORT
# The services listen on ORIGIN_PORT+1 … +5 (posts, comments, query, moderation,
# event-bus); pids go to WORK_DIR/*.pid, logs to WORK_DIR/*.log. Runs `npm ci` once if
# node_modules is missing. Returns when the origin answers GET /posts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1 origin=$2
posts=$((origin + 1)) comments=$((origin + 2)) query=$((origin + 3))
moderation=$((origin + 4)) bus=$((origin + 5))
[ -d "$here/node_modules" ] || (cd "$here" && npm ci --no-audit --no-fund --silent >/dev/null)
mkdir -p "$work"
export EVENT_BUS_URL=http://127.0.0.1:$bus
export POSTS_URL=http://127.0.0.1:$posts COMMENTS_URL=http://127.0.0.1:$comments
export QUERY_URL=http://127.0.0.1:$query MODERATION_URL=http://127.0.0.1:$moderation
export POSTS_PORT=$posts COMMENTS_PORT=$comments QUERY_PORT=$query
export MODERATION_PORT=$moderation EVENT_BUS_PORT=$bus
# The bus first: query replays its log on start.
for service in event-bus posts comments moderation query; do
  node "$here/$service/index.js" >"$work/original-$service.log" 2>&1 &
  echo $! >"$work/original-$service.pid"
  port_var=$(echo "$service" | tr a-z- A-Z_)_PORT
  for _ in $(seq 100); do
    grep -q Listening "$work/original-$service.log" 2>/dev/null && break; sleep 0.05
  done
  grep -q Listening "$work/original-$service.log" || {
    echo "original $service did not start (port ${!port_var}):" >&2; cat "$work/original-$service.log" >&2; exit 1
  }
done
sed -e "s|@WORK@|$work|g" -e "s|@ORIGIN@|$origin|g" -e "s|@POSTS@|$posts|g" \
  -e "s|@COMMENTS@|$comments|g" -e "s|@QUERY@|$query|g" "$here/nginx.conf.in" >"$work/original-nginx.conf"
nginx -p "$work" -c "$work/original-nginx.conf"
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$origin/posts" && exit 0; sleep 0.05; done
echo "the original's nginx origin did not answer on $origin" >&2; exit 1
