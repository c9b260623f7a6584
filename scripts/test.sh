#!/usr/bin/env bash
# The README's test command: installs the test bed's parts if missing, then runs every test
# (unit, table, property, and integration tests against the real FHIR server and the real
# authorization server, which each test binary starts and stops itself), and ends with one
# summary line over all test binaries. Without arguments it then builds smartgate with the `otel`
# feature and runs tests/otel.rs (OpenTelemetry export; a few minutes more on 2 cores, most of it
# that second build).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
if [[ $# -eq 0 ]]; then
  cargo test --locked --features otel --test otel 2>&1 | tee -a "$log" || status=$?
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
