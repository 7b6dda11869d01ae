#!/usr/bin/env bash
# Installs (if missing) and starts the real servers the test suite talks to, without
# systemd: PostgreSQL 15, MariaDB, RabbitMQ, an SMTP sink (aiosmtpd), an S3-compatible
# store (moto's server), strace (the power-loss test), ffmpeg for
# media fixtures, and podman for the image test. Idempotent: a server that already
# answers is left alone.
# Writes the FLOTILLA_TEST_* variables to the file named by $1 (default
# /tmp/flotilla-test-env.sh); `source` it before `cargo test`.
set -euo pipefail
env_file=${1:-/tmp/flotilla-test-env.sh}
log_dir=${FLOTILLA_SERVER_LOGS:-/tmp/flotilla-servers}
mkdir -p "$log_dir"

need=()
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
[ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
# The image test (tests/tests/image.rs) builds and runs the image with podman + runc.
command -v podman >/dev/null || need+=(podman buildah)
command -v runc >/dev/null || need+=(runc)
command -v chromium >/dev/null || need+=(chromium)
command -v psql >/dev/null || need+=(postgresql-client)
# The power-loss test (tests/tests/blog_power_loss.rs) reads the syscalls of `flotilla up`.
command -v strace >/dev/null || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$log_dir/apt.log" 2>&1 \
    || { tail -n 30 "$log_dir/apt.log"; exit 1; }
fi
# kubernetes-validate (with PyYAML), podman-compose and check-jsonschema check the
# deployment files (tests/tests/deploy.rs).
# moto's server is the S3-compatible store (crates/storage/tests/s3.rs).
# playwright drives Debian's chromium in tests/tests/web_ui.rs (no browser download: it
# uses /usr/bin/chromium). Schemathesis (major version 4, whose configuration file and
# checks tests/tests/schemathesis.rs uses) tests the API.
if ! python3 -c 'import aiosmtpd, yaml, playwright' 2>/dev/null || ! command -v kubernetes-validate >/dev/null \
  || ! command -v moto_server >/dev/null \
  || ! command -v podman-compose >/dev/null || ! command -v check-jsonschema >/dev/null \
  || ! schemathesis --version 2>/dev/null | grep -q 'version 4\.'; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 pip install -q aiosmtpd kubernetes-validate pyyaml podman-compose check-jsonschema 'moto[server]>=5,<6' playwright \
    'schemathesis>=4,<5' >"$log_dir/pip.log" 2>&1 \
    || { tail -n 30 "$log_dir/pip.log"; exit 1; }
fi
command -v kubectl >/dev/null || need_kubectl=1
if [ "${need_kubectl:-0}" = 1 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >>"$log_dir/apt.log" 2>&1 \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >>"$log_dir/apt.log" 2>&1
fi

wait_for() { # name, tries, command...
  local name=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "$name did not start"; return 1
}

# PostgreSQL
pg_version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! su postgres -c "pg_isready -q -h 127.0.0.1" 2>/dev/null; then
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  touch "$log_dir/postgres.log" && chown postgres "$log_dir/postgres.log"
  su postgres -c "/usr/lib/postgresql/$pg_version/bin/pg_ctl -D /var/lib/postgresql/$pg_version/main \
    -o '-c config_file=/etc/postgresql/$pg_version/main/postgresql.conf -c max_connections=300' \
    -l $log_dir/postgres.log -w start" >/dev/null
fi
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='app'\"" | grep -q 1 \
  || su postgres -c "psql -q -c \"CREATE ROLE app LOGIN CREATEDB PASSWORD 'app'\" -c 'CREATE DATABASE app OWNER app'"

# MariaDB
if ! mariadb-admin ping >/dev/null 2>&1; then
  install -d -o mysql -g mysql /run/mysqld /var/log/mysql
  /usr/sbin/mariadbd --user=mysql --max-connections=500 --log-error="$log_dir/mariadb.log" >/dev/null 2>&1 &
  wait_for mariadb 200 mariadb-admin ping
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS app; CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app'; \
  GRANT ALL ON *.* TO 'app'@'%'; FLUSH PRIVILEGES"

# RabbitMQ. The test broker keeps its data under $log_dir/rabbitmq, new at each start: a
# broker that came back up on state the tests left behind (thousands of queues in dozens
# of vhosts) was seen listening on 5672 and never answering a handshake, failing every
# AMQP test. A broker that answers `status` but not the AMQP handshake is stopped and
# started afresh for the same reason.
amqp_answers() { # the broker answers AMQP's protocol header with Connection.Start
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672; printf "AMQP\x00\x00\x09\x01" >&3; head -c 7 <&3' \
    2>/dev/null | od -An -tx1 | tr -d ' \n' | grep -q '^01000000'
}
rabbitmq_running=0
timeout 30 rabbitmqctl -q status >/dev/null 2>&1 && rabbitmq_running=1
if [ "$rabbitmq_running" = 1 ] && ! amqp_answers; then
  echo "RabbitMQ runs but does not answer AMQP: restarting it on fresh data"
  timeout 30 rabbitmqctl -q stop >/dev/null 2>&1 || pkill -9 -u rabbitmq beam.smp || true
  for _ in $(seq 40); do pgrep -u rabbitmq beam.smp >/dev/null || break; sleep 0.25; done
  rabbitmq_running=0
fi
if [ "$rabbitmq_running" = 0 ]; then
  pkill -9 -u rabbitmq beam.smp 2>/dev/null || true # a node too wedged to answer status
  rm -rf "$log_dir/rabbitmq"
  install -d -o rabbitmq -g rabbitmq "$log_dir/rabbitmq"
  RABBITMQ_MNESIA_BASE="$log_dir/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$log_dir/rabbitmq" \
    rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 240); do rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 && break; sleep 0.5; done
  rabbitmqctl -q await_startup --timeout 10 >/dev/null
fi
wait_for rabbitmq 120 amqp_answers

# SMTP sink: every message stored as a file in a Maildir
if ! (exec 3<>/dev/tcp/127.0.0.1/2525) 2>/dev/null; then
  mkdir -p "$log_dir/maildir"
  nohup python3 -m aiosmtpd -n -l 127.0.0.1:2525 -c aiosmtpd.handlers.Mailbox "$log_dir/maildir" \
    >"$log_dir/smtp.log" 2>&1 &
  wait_for smtp 80 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2525'
fi

# S3-compatible store: moto's server, in memory (each test makes its own bucket)
if ! (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null; then
  nohup moto_server -H 127.0.0.1 -p 9090 >"$log_dir/s3.log" 2>&1 &
  wait_for s3 120 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9090'
fi

cat >"$env_file" <<ENV
export FLOTILLA_TEST_POSTGRES_URL=postgres://app:app@127.0.0.1:5432/app
export FLOTILLA_TEST_MYSQL_URL=mysql://app:app@127.0.0.1:3306/app
export FLOTILLA_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
export FLOTILLA_TEST_SMTP_URL=smtp://127.0.0.1:2525
export FLOTILLA_TEST_MAILDIR=$log_dir/maildir
export FLOTILLA_TEST_S3_ENDPOINT=http://127.0.0.1:9090
ENV
echo "servers ready; variables in $env_file"
