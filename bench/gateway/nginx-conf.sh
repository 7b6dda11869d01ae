# Sourced by the gateway benchmarks: the nginx configuration they share.
# nginx_conf DIR UPSTREAM_ADDR PROXY_PORT [UPSTREAM_PORT]
#   writes DIR/nginx.conf: one worker, no access log, a proxy on 127.0.0.1:PROXY_PORT in
#   front of UPSTREAM_ADDR with a keepalive pool; with UPSTREAM_PORT, the same process
#   also serves the trivial upstream (`return 200 "ok"`) there.
nginx_conf() {
  local dir=$1 upstream=$2 proxy=$3 serve=${4:-} trivial=""
  if [ -n "$serve" ]; then
    trivial="server { listen 127.0.0.1:$serve; location / { return 200 \"ok\"; } }"
  fi
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream trivial { server $upstream; keepalive 128; }
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
}
