#!/bin/sh
# Event bus benchmark (see BENCHMARKS.md, "Event bus"): raw lapin vs the bus's RabbitMQ
# backend vs the embedded bus, durable 1 KB messages, confirms and acks, end to end.
# Needs a RabbitMQ: FLOTILLA_TEST_AMQP_URL (source /tmp/flotilla-test-env.sh here).
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p bus-bench
echo "== throughput (as fast as confirms allow)"
./target/release/bus-bench --messages "${MESSAGES:-20000}" --rounds "${ROUNDS:-3}"
echo "== latency below capacity (2000 msg/s)"
./target/release/bus-bench --messages 10000 --rounds 2 --rate 2000
