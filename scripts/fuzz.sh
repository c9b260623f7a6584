#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for a short time:
#   scripts/fuzz.sh [SECONDS-PER-TARGET | --total SECONDS] [target…]
#
# --total splits a wall-clock budget over the targets, which run FUZZ_JOBS at a time
# (default: one per core), so each gets TOTAL * JOBS / TARGETS seconds (at least 5).
#
# Needs a nightly toolchain. Without one it prints a visible SKIP and exits 0: only stable is
# promised on every machine. With nightly and no cargo-fuzz, installs it
# (`cargo install --locked cargo-fuzz`, ~2-3 min on 2 cores, once per machine).
#
# Built without a sanitizer (`-s none`): the crate is `#![forbid(unsafe_code)]`, so AddressSanitizer
# finds little, while panics, overflows (debug assertions and overflow checks stay on) and
# timeouts are what the fuzzers look for; skipping ASan and building with 16 codegen units
# cuts a cold build from 5-20 min to ~4 min on 2 cores. All targets build in one cargo run
# into fuzz/target (its own workspace, never the shared target dir), and each target runs its
# built binary directly, so nothing is rebuilt between runs.
# Seeds (fuzz/seeds/<target>/, committed, from the test suites via fuzz/make_seeds.py) are
# copied into fuzz/corpus/<target>/ (gitignored) first. Exits 1 when a target crashes, times
# out or runs out of memory; the reproducer is in fuzz/artifacts/<target>/ and
# `fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-…` replays it.
set -uo pipefail
cd "$(dirname "$0")/.."

ALL=(classify search_body scope token filter_bundle fhirpath config framing)
SECS=20
TOTAL=""
if [[ "${1:-}" == --total ]]; then
  TOTAL="${2:?--total needs seconds}"
  shift 2
elif [[ $# -gt 0 ]]; then
  SECS="$1"
  shift
fi
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")
JOBS="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}"
if [[ -n "$TOTAL" ]]; then
  SECS=$(( TOTAL * JOBS / ${#TARGETS[@]} ))
  (( SECS >= 5 )) || SECS=5
fi

skip() {
  printf '\n*** SKIP fuzzing: %s ***\n\n' "$*" >&2
  exit 0
}

cargo +nightly --version >/dev/null 2>&1 || skip "no nightly toolchain (cargo +nightly --version failed)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz (cargo install --locked cargo-fuzz)" >&2
  started=$(date +%s)
  cargo install --locked cargo-fuzz >/dev/null 2>&1 || skip "cargo install cargo-fuzz failed"
  echo "[fuzz] cargo-fuzz installed in $(( $(date +%s) - started ))s" >&2
fi

unset CARGO_TARGET_DIR
export CARGO_TERM_COLOR=never
BUILD=(-s none --codegen-units 16)
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
echo "[fuzz] building ${#ALL[@]} targets (cargo +nightly fuzz build ${BUILD[*]})" >&2
started=$(date +%s)
build_log="$(mktemp)"
if ! (cd fuzz && cargo +nightly fuzz build "${BUILD[@]}") >"$build_log" 2>&1; then
  cat "$build_log" >&2
  echo "[fuzz] FAILED to build the fuzz targets" >&2
  exit 2
fi
rm -f "$build_log"
echo "[fuzz] built in $(( $(date +%s) - started ))s; running ${#TARGETS[@]} targets ${SECS}s each, $JOBS at a time" >&2

# One target: its seeds into its corpus, then libFuzzer until SECS are up. The exit status is
# libFuzzer's: 0 when the time ran out without a crash, timeout or OOM.
run() {
  local t="$1"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  [[ -d "fuzz/seeds/$t" ]] && cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null
  "$BIN/$t" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t/" \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    >"fuzz/artifacts/$t/last-run.log" 2>&1
}

report() {
  local t="$1" rc="$2" took="$3" log="fuzz/artifacts/$1/last-run.log"
  local execs cov
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [[ $rc -eq 0 ]]; then
    printf '[fuzz] %-14s ok    %6ss  %10s execs  %s\n' "$t" "$took" "${execs:-?}" "${cov:-}"
  else
    printf '[fuzz] %-14s CRASH (exit %s), see %s\n' "$t" "$rc" "$log"
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/         /'
  fi
}

declare -A pid_of=() start_of=()
failed=()
wait_one() {
  local done_pid="" rc t
  wait -n -p done_pid "${pid_of[@]}"
  rc=$?
  if [[ -z "$done_pid" ]]; then
    echo "[fuzz] lost track of: ${!pid_of[*]}" >&2
    failed+=("${!pid_of[@]}")
    pid_of=()
    return
  fi
  for t in "${!pid_of[@]}"; do
    [[ "${pid_of[$t]}" == "$done_pid" ]] || continue
    report "$t" "$rc" "$(( $(date +%s) - start_of[$t] ))"
    [[ $rc -eq 0 ]] || failed+=("$t")
    unset "pid_of[$t]"
  done
}
for t in "${TARGETS[@]}"; do
  [[ -x "$BIN/$t" ]] || { echo "[fuzz] no such target: $t" >&2; failed+=("$t"); continue; }
  while [[ ${#pid_of[@]} -ge $JOBS ]]; do wait_one; done
  start_of[$t]=$(date +%s)
  run "$t" &
  pid_of[$t]=$!
done
while [[ ${#pid_of[@]} -gt 0 ]]; do wait_one; done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "[fuzz] crashed: ${failed[*]}" >&2
  exit 1
fi
echo "[fuzz] all ${#TARGETS[@]} targets ran ${SECS}s without a crash"
