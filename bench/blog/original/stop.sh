#!/usr/bin/env bash
# Stops what start.sh started in WORK_DIR (only those pids).
#   bench/blog/original/stop.sh WORK_DIR
work=$1
nginx -p "$work" -c "$work/original-nginx.conf" -s stop 2>/dev/null || true
for f in "$work"/original-{event-bus,posts,comments,moderation,query}.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
true
