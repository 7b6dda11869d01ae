# Sourced by the gateway benchmarks: the nginx configurations they share.
# nginx_conf DIR UPSTREAM_ADDR PROXY_PORT [UPSTREAM_PORT] [WORKERS]
#   writes DIR/nginx.conf: WORKERS worker processes (default 1), no access log, a proxy
#   on 127.0.0.1:PROXY_PORT in front of UPSTREAM_ADDR with a keepalive pool; with
#   UPSTREAM_PORT, the same process also serves the trivial upstream (`return 200 "ok"`)
#   there.
# nginx_upstream_conf DIR PORT WORKERS
#   writes DIR/nginx.conf: only the trivial upstream on 127.0.0.1:PORT, so that it runs as
#   a process of its own and no proxy's figure depends on what the upstream costs it.
# nginx_head DIR WORKERS: the part both configurations share, up to `http {`'s settings.
nginx_head() {
  local dir=$1 workers=$2
  mkdir -p "$dir/logs"
  cat <<NGINX
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # nginx closes a keepalive connection after 1000 requests by default, client side and
  # upstream side; the other proxies keep theirs, so neither pays reconnects here.
  keepalive_requests 1000000;
NGINX
}
nginx_conf() {
  local dir=$1 upstream=$2 proxy=$3 serve=${4:-} workers=${5:-1} trivial=""
  # The directory first: the redirection below opens DIR/nginx.conf before nginx_head runs.
  mkdir -p "$dir"
  if [ -n "$serve" ]; then
    trivial="server { listen 127.0.0.1:$serve; location / { return 200 \"ok\"; } }"
  fi
  {
    nginx_head "$dir" "$workers"
    cat <<NGINX
  upstream trivial { server $upstream; keepalive 128; keepalive_requests 1000000; }
  $trivial
  server {
    listen 127.0.0.1:$proxy;
    location / {
      proxy_pass http://trivial;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
  } >"$dir/nginx.conf"
}
nginx_upstream_conf() {
  local dir=$1 port=$2 workers=$3
  mkdir -p "$dir"
  {
    nginx_head "$dir" "$workers"
    cat <<NGINX
  server { listen 127.0.0.1:$port; location / { return 200 "ok"; } }
}
NGINX
  } >"$dir/nginx.conf"
}
