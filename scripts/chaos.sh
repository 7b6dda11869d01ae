#!/usr/bin/env bash
# The chaos run (flotilla/tests/chaos.rs): production mode on this machine under a steady
# mixed load with one random fault per round — kill -9, SIGTERM, RabbitMQ and PostgreSQL
# restarted, the SMTP sink down, the blob disk full, the network to the broker slowed or
# cut — then an independent check of the databases, maildir, blobs and queues.
#
#   sudo scripts/chaos.sh [ROUNDS]        (default 200; CI runs 20)
#
# It restarts the RabbitMQ and PostgreSQL that scripts/ci/start-servers.sh runs: don't
# run it while something else uses them. Needs root (a tmpfs for the blob disk). Prints
# `chaos: R rounds, F faults, …, lost 0, duplicate 0, stuck 0, unexpected dead letters 0`
# last, and where the JSON report (and, on failure, every process's log) is.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
env_file=/tmp/flotilla-test-env.sh
bash scripts/ci/start-servers.sh "$env_file" >/dev/null
# shellcheck source=/dev/null
source "$env_file"
pg_version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
export FLOTILLA_TEST_RABBITMQ_RESTART_CMD=${FLOTILLA_TEST_RABBITMQ_RESTART_CMD:-'rabbitmqctl -q stop_app && rabbitmqctl -q start_app'}
export FLOTILLA_TEST_POSTGRES_RESTART_CMD=${FLOTILLA_TEST_POSTGRES_RESTART_CMD:-"su postgres -c '/usr/lib/postgresql/$pg_version/bin/pg_ctl -D /var/lib/postgresql/$pg_version/main -m fast -w restart' >/dev/null"}
export FLOTILLA_CHAOS_ROUNDS=$rounds
exec cargo test -p flotilla --test chaos -- --nocapture
