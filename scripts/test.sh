#!/usr/bin/env bash
# The README's test command: installs the test bed's parts if missing, then runs every test
# (unit, table, property, and integration tests against the real FHIR server and the real
# authorization server, which each test binary starts and stops itself), and ends with one
# summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
