#!/usr/bin/env bash
# The README's test command: installs the test bed's parts if missing, then runs every test
# (unit, table, property, and integration tests against the real FHIR server and the real
# authorization server, which each test binary starts and stops itself).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --locked "$@"
