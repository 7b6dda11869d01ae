#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a short time each — 30 s by default,
# FUZZ_SECONDS to change it — starting from the committed seeds (fuzz/seeds/TARGET) and
# a scratch corpus that is thrown away. Any crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/. The long runs and their counts are in docs/FUZZING.md.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly features come from
# RUSTC_BOOTSTRAP=1 on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
seconds=${FUZZ_SECONDS:-30}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target" "seeds/$target"
  echo "== fuzz $target (${seconds} s)"
  # -rss_limit_mb: a parser that grows with its input shows up as a failure too.
  if ! cargo fuzz run "$target" "$scratch/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
      >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log"
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$scratch/$target.log" || true
done
