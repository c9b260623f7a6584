#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a short time: scripts/fuzz.sh [seconds-per-target] [target…]
#
# Needs a nightly toolchain (cargo-fuzz builds with -Zsanitizer=address). Without one it
# prints a visible SKIP and exits 0: only stable is promised on every machine. With nightly
# and no cargo-fuzz, installs it (`cargo install cargo-fuzz --locked`, ~30 s-3 min).
# Seeds (fuzz/seeds/<target>/, committed) are copied into fuzz/corpus/<target>/ (gitignored)
# first. Exits non-zero when a target crashes; the reproducer is in fuzz/artifacts/<target>/
# (`cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…` replays it).
# The fuzz crate builds into fuzz/target (its own workspace), never the shared target dir.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(classify search_body scope token filter_bundle fhirpath config)

skip() {
  printf '\n*** SKIP fuzzing: %s ***\n\n' "$*" >&2
  exit 0
}

cargo +nightly --version >/dev/null 2>&1 || skip "no nightly toolchain (cargo +nightly --version failed)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >/dev/null 2>&1 || skip "cargo install cargo-fuzz failed"
fi

unset CARGO_TARGET_DIR
export CARGO_TERM_COLOR=never
echo "[fuzz] building ${#TARGETS[@]} targets" >&2
build_log="$(mktemp)"
if ! (cd fuzz && cargo +nightly fuzz build -O) >"$build_log" 2>&1; then
  cat "$build_log" >&2
  echo "[fuzz] FAILED to build the fuzz targets" >&2
  exit 2
fi
rm -f "$build_log"

failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  [[ -d "fuzz/seeds/$t" ]] && cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null
  log="fuzz/artifacts/$t/last-run.log"
  started=$(date +%s)
  (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1) >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [[ $rc -eq 0 ]]; then
    printf '[fuzz] %-14s ok    %6ss  %10s execs  %s\n' "$t" "$(( $(date +%s) - started ))" "${execs:-?}" "${cov:-}"
  else
    printf '[fuzz] %-14s CRASH (exit %s), see %s\n' "$t" "$rc" "$log"
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/         /'
    failed+=("$t")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "[fuzz] crashed: ${failed[*]}" >&2
  exit 1
fi
echo "[fuzz] all ${#TARGETS[@]} targets ran ${SECS}s without a crash"
