#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a short time each — 10 s by default,
# FUZZ_SECONDS to change it — starting from the committed seeds (fuzz/seeds/TARGET) and
# a scratch corpus that is thrown away. Any crash, leak, timeout or out-of-memory fails
# the run and leaves its input in fuzz/artifacts/TARGET/. The long runs and their counts
# are in docs/FUZZING.md, made with the same build flags as here.
# Installs cargo-fuzz (pinned) when missing; nightly features come from
# RUSTC_BOOTSTRAP=1 on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
seconds=${FUZZ_SECONDS:-10}
cargo_fuzz_version=0.13.2
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz $cargo_fuzz_version"; then
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi
# No sanitizer: the workspace forbids unsafe code, so AddressSanitizer would instrument
# only dependencies' unsafe blocks, at twice the build time and half the speed. Debug
# assertions and overflow checks stay on (cargo-fuzz's default), so an overflow is a crash.
flags=(--sanitizer none)
cargo fuzz build "${flags[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target" "seeds/$target"
  echo "== fuzz $target (${seconds} s)"
  # -rss_limit_mb: a parser that grows with its input shows up as a failure too.
  if ! cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
      >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log"
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
    "$scratch/$target.log" || true
done
