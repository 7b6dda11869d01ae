# Sourced by the gateway benchmarks: the HAProxy configuration they share.
# haproxy_conf DIR UPSTREAM_ADDR PROXY_PORT THREADS
#   writes DIR/haproxy.cfg: one process with THREADS threads, HTTP mode, no log, a proxy on
#   127.0.0.1:PROXY_PORT in front of UPSTREAM_ADDR, its server connections kept alive and
#   shared between clients (`http-reuse always`, as nginx's `keepalive` pool is).
haproxy_conf() {
  local dir=$1 upstream=$2 proxy=$3 threads=$4
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<HAPROXY
global
  nbthread $threads
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
  http-reuse always
frontend proxy
  bind 127.0.0.1:$proxy
  default_backend trivial
backend trivial
  server upstream $upstream
HAPROXY
}
