#!/usr/bin/env bash
# smartgate load benchmark (the Performance issue): smartgate against the same request served directly by nginx and
# through a plain nginx reverse proxy, on 127.0.0.1 only.
#
#   benches/load/run.sh
#
# Environment:
#   BENCH_DURATION=10s   length of each wrk run (wrk syntax: 5s, 30s, 1m)
#   BENCH_VARIANTS=direct,nginx,hyper,sg-jwt,sg-opaque   which variants to run (direct/nginx need no build)
#   BENCH_SCENARIOS=read:16,search-50   only these scenarios (name or name:conns; default: all)
#   BENCH_NO_MEMORY=1    skip the memory tests (idle RSS, 1,000 connections, 100 MB stream)
#   BENCH_NO_RATE=1      skip the fixed-rate latency runs (and so the oha install)
#   BENCH_OUT=DIR        where results go (default: <repo>/bench-results, gitignored)
#   BENCH_KEEP=1         keep the temp dir (nginx confs, logs, canned data, tokens) and print its path
#   SMARTGATE_BIN=PATH   use this smartgate binary instead of building it
#   PASSTHROUGH_BIN=PATH use this build of the passthrough example (the `hyper` floor) instead of building it
#   CARGO_TARGET_DIR     honoured by the release build (default <repo>/target)
#
# What it does: installs nginx-light, wrk and curl with apt-get when missing, and oha (the fixed-rate load generator)
# with `cargo install` (about 5 minutes, once); builds smartgate with
# `cargo build --release`; generates canned FHIR JSON (Patient/A, 50-, 1,000- and 10,000-entry Observation Bundles),
# an RSA key, its JWKS and RS256 tokens (benches/load/gen.py); starts an upstream nginx serving them, a plain nginx
# reverse proxy and smartgate (benches/load/bench.py); runs wrk for every scenario x variant back to back; measures
# smartgate memory; writes bench-results/load-<date>.json and .md. Every process it started is stopped on exit.
# Details and how to read the numbers: benches/load/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DURATION="${BENCH_DURATION:-10s}"
VARIANTS="${BENCH_VARIANTS:-direct,nginx,hyper,sg-jwt,sg-opaque}"
OUT="${BENCH_OUT:-$REPO/bench-results}"
say() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] error: %s\n' "$*" >&2; exit 1; }

# --- tools
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [[ ${#missing[@]} -gt 0 ]]; then
  [[ "$(id -u)" == 0 ]] || die "missing ${missing[*]}: install them (apt-get install -y ${missing[*]}) or run as root"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y "${missing[@]}" >/dev/null ||
    { timeout 600 apt-get update >/dev/null && timeout 600 apt-get install -y "${missing[@]}" >/dev/null; } ||
    die "apt-get install ${missing[*]} failed"
fi
export PATH="$PATH:/usr/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"
# oha is the one fixed-rate (open-loop) generator that installs here: Debian has no wrk2.
if [[ "${BENCH_NO_RATE:-0}" != 1 ]] && ! command -v oha >/dev/null 2>&1; then
  say "installing oha (cargo install oha --locked, about 5 minutes)"
  timeout 1200 cargo install oha --locked --quiet >/dev/null || die "cargo install oha failed (BENCH_NO_RATE=1 skips the fixed-rate runs)"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed"

# --- smartgate and the hyper floor
# built GIVEN PATH CARGO_ARGS...: GIVEN when set (a binary the caller built), else a release build, printed on
# stdout (cargo's output goes to stderr). PATH is the binary's place under the target's release directory.
built() {
  local given="$1" path="$2"
  shift 2
  if [[ -n "$given" ]]; then
    [[ -x "$given" ]] || die "$given is not executable"
    echo "$given"
    return
  fi
  say "cargo build --release $*"
  (cd "$REPO" && cargo build --release --locked "$@" >&2) || die "cargo build --release $* failed"
  local bin="${CARGO_TARGET_DIR:-$REPO/target}/release/$path"
  [[ -x "$bin" ]] || die "no binary at $bin"
  echo "$bin"
}
SG_ARGS=()
if [[ ",$VARIANTS," == *",sg-"* ]]; then
  BIN="$(built "${SMARTGATE_BIN:-}" smartgate --bin smartgate)" || exit 1
  SG_ARGS=(--smartgate "$BIN")
fi
if [[ ",$VARIANTS," == *",hyper,"* ]]; then
  PT="$(built "${PASSTHROUGH_BIN:-}" examples/passthrough --example passthrough)" || exit 1
  SG_ARGS+=(--passthrough "$PT")
fi

# --- run
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK="$(mktemp -d "${TMPDIR:-/tmp}/smartgate-load.XXXXXX")"
BENCH_PID=""
cleanup() {
  local rc=$?
  # The driver stops its own children on TERM; the pid file catches whatever it could not.
  if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  if [[ -f "$WORK/pids" ]]; then
    while read -r pid; do
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
    done <"$WORK/pids"
    sleep 1
    while read -r pid; do
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done <"$WORK/pids"
  fi
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Upper bound: 7 scenarios x 5 variants + 4 fixed-rate runs, each duration + slack, + warm-up + memory tests.
secs="$(python3 -c 'import re,sys; m=re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", sys.argv[1]); v=float(m.group(1)) if m else 10; u=m.group(2) if m else "s"; print(int(v/1000 if u=="ms" else v*60 if u=="m" else v))' "$DURATION")"
limit=$(( 39 * (secs + 10) + 600 ))
EXTRA=()
[[ "${BENCH_NO_MEMORY:-0}" == 1 ]] && EXTRA=(--no-memory)
[[ "${BENCH_NO_RATE:-0}" == 1 ]] && EXTRA+=(--no-rate)
cmd="BENCH_DURATION=$DURATION BENCH_VARIANTS=$VARIANTS${BENCH_SCENARIOS:+ BENCH_SCENARIOS=$BENCH_SCENARIOS} benches/load/run.sh"
# In the background + wait, so that INT/TERM reach the trap at once instead of after the run.
timeout -k 10 "$limit" python3 "$HERE/bench.py" --work "$WORK" --out "$OUT" --duration "$DURATION" \
  --variants "$VARIANTS" --command "$cmd" ${SG_ARGS[@]+"${SG_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} &
BENCH_PID=$!
wait "$BENCH_PID"
BENCH_PID=""
latest="$(ls -t "$OUT"/load-*.md 2>/dev/null | head -1)"
[[ -n "$latest" ]] && { say "results: $latest"; cat "$latest"; }
