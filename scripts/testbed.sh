#!/usr/bin/env bash
# smartgate test bed: start/stop a real FHIR server (hfs) + a real OAuth2/OIDC server (oidc-provider) on free
# ports, load the deterministic data set, and describe them in DIR/env (shell-sourceable KEY=VALUE lines).
#
#   scripts/testbed.sh start  [--dir DIR] [--watch-pid PID] [--no-data]
#   scripts/testbed.sh stop   [--dir DIR]
#   scripts/testbed.sh status [--dir DIR]
#   scripts/testbed.sh env    [--dir DIR]
#   scripts/testbed.sh mint   [--dir DIR] --scope '...' [...]      (same as scripts/mint-token.sh)
#
# DIR defaults to .testbed/ at the repo root. Several beds may run at once (one DIR each). With --watch-pid the
# bed stops itself when PID exits (a test binary can start it and never leak it). Logs: DIR/hfs.log, DIR/as.log,
# DIR/load.log, DIR/watchdog.log. DIR/env is written last: when it exists, the bed is ready.
# Run scripts/install-deps.sh first.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${SMARTGATE_CACHE:-$HOME/.cache/smartgate}"
HFS_BIN="${HFS_BIN:-${HFS_ROOT:-$CACHE/hfs-0.2.7-debug}/bin/hfs}"
SEARCH_PARAMS="$CACHE/search-parameters-r4-4.5.2.json"
HFS_READY_TIMEOUT="${TESTBED_HFS_TIMEOUT:-90}"
AS_READY_TIMEOUT="${TESTBED_AS_TIMEOUT:-30}"

die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }
log() { printf '[testbed] %s\n' "$*" >&2; }

cmd="${1:-}"; [[ -n "$cmd" ]] || die "usage: $0 start|stop|status|env|mint [--dir DIR] [--watch-pid PID]"
shift
DIR="$ROOT/.testbed"; WATCH_PID=""; LOAD_DATA=1; REST=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --watch-pid) WATCH_PID="$2"; shift 2 ;;
    --no-data) LOAD_DATA=0; shift ;;
    *) REST+=("$1"); shift ;;
  esac
done
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
pid_of() { if [[ -f "$DIR/$1.pid" ]]; then cat "$DIR/$1.pid"; fi; }
# A pid counts as ours only if it is alive AND its command line still looks like what we started (pid reuse).
ours() {
  local pid="$1" what="$2"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$what"
}
tail_logs() { for f in "$@"; do [[ -f "$f" ]] && { echo "----- tail $f" >&2; tail -n 30 "$f" >&2; }; done; }

# Poll URL until it answers 2xx, the process dies, or the timeout expires.
wait_http() {
  local url="$1" pid="$2" timeout="$3" start=$SECONDS
  while (( SECONDS - start < timeout )); do
    kill -0 "$pid" 2>/dev/null || return 2
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.3
  done
  return 1
}

kill_ours() {
  local name="$1" what="$2" pid
  pid="$(pid_of "$name")"
  if ours "$pid" "$what"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$DIR/$name.pid"
}

do_stop() {
  rm -f "$DIR/env"
  local wd; wd="$(pid_of watchdog)"
  # The watchdog itself calls `stop`: never kill the process that is running us.
  if [[ -n "$wd" && "$wd" != "$$" && "$wd" != "$PPID" ]]; then kill_ours watchdog "_watchdog"; else rm -f "$DIR/watchdog.pid"; fi
  kill_ours as "server.mjs"
  kill_ours hfs "hfs"
}

start_as() {
  local port
  for _ in 1 2 3; do
    port="$(free_port)"
    (cd "$HERE/authserver" && exec setsid node server.mjs "$port" >"$DIR/as.log" 2>&1 </dev/null) &
    echo $! > "$DIR/as.pid"
    if wait_http "http://127.0.0.1:$port/.well-known/openid-configuration" "$!" "$AS_READY_TIMEOUT"; then
      AS_PORT="$port"; return 0
    fi
    grep -q EADDRINUSE "$DIR/as.log" 2>/dev/null || break
    log "port $port taken, retrying"
  done
  return 1
}

start_hfs() {
  local port data="$DIR/hfs-data"
  mkdir -p "$data"
  cp -f "$SEARCH_PARAMS" "$data/search-parameters-r4.json"
  for _ in 1 2 3; do
    port="$(free_port)"
    # Bulk Data export ($export): hfs keeps its jobs' NDJSON files under
    # HFS_BULK_EXPORT_OUTPUT_DIR (hfs's `--export-dir` is the SQL-on-FHIR sink, not this).
    mkdir -p "$DIR/exports"
    (cd "$data" && HFS_UI_ENABLED=false HFS_BULK_EXPORT_OUTPUT_DIR="$DIR/exports" exec setsid "$HFS_BIN" --port "$port" --host 127.0.0.1 \
        --database-url :memory: --data-dir "$data" --base-url "http://127.0.0.1:$port" --log-level warn \
        >"$DIR/hfs.log" 2>&1 </dev/null) &
    echo $! > "$DIR/hfs.pid"
    if wait_http "http://127.0.0.1:$port/metadata" "$!" "$HFS_READY_TIMEOUT"; then
      HFS_PORT="$port"; return 0
    fi
    grep -qi "address already in use\|AddrInUse" "$DIR/hfs.log" 2>/dev/null || break
    log "port $port taken, retrying"
  done
  return 1
}

# POST every transaction Bundle in order, then check hfs holds what the manifest says.
load_data() {
  local base="$1" data="$DIR/data" f code
  : > "$DIR/load.log"
  rm -rf "$data"
  python3 "$HERE/gen_data.py" "$data" 2>>"$DIR/load.log"
  for f in "$data"/bundle-*.json; do
    code="$(curl -sS -o "$DIR/load-last.json" -w '%{http_code}' --max-time 300 -X POST \
      -H 'Content-Type: application/fhir+json' -H 'Accept: application/fhir+json' --data-binary "@$f" "$base")" \
      || { echo "curl failed for $f" >> "$DIR/load.log"; return 1; }
    echo "$(basename "$f") -> $code" >> "$DIR/load.log"
    [[ "$code" == 200 ]] || { head -c 2000 "$DIR/load-last.json" >> "$DIR/load.log"; return 1; }
  done
  rm -f "$DIR/load-last.json"
  python3 - "$base" "$data/manifest.json" >>"$DIR/load.log" 2>&1 <<'EOF'
import json, sys, urllib.request
base, manifest = sys.argv[1], json.load(open(sys.argv[2]))
bad = []
for rtype, want in manifest["counts"].items():
    with urllib.request.urlopen(f"{base}/{rtype}?_total=accurate&_count=0", timeout=60) as r:
        got = json.load(r).get("total")
    print(f"{rtype}: want {want} got {got}")
    if got != want:
        bad.append(rtype)
if bad:
    sys.exit(f"count mismatch for {bad}")
print(f"loaded {manifest['total']} resources")
EOF
}

write_env() {
  local as="http://127.0.0.1:$AS_PORT" fhir="http://127.0.0.1:$HFS_PORT"
  cat > "$DIR/env.tmp" <<EOF
TESTBED_DIR=$DIR
FHIR_BASE=$fhir
HFS_PORT=$HFS_PORT
HFS_PID=$(pid_of hfs)
AS_ISSUER=$as
AS_PORT=$AS_PORT
AS_PID=$(pid_of as)
AS_DISCOVERY=$as/.well-known/openid-configuration
AS_JWKS=$as/jwks
AS_TOKEN=$as/token
AS_INTROSPECT=$as/token/introspection
AS_REVOKE=$as/token/revocation
AS_AUTHORIZE=$as/auth
AS_CONTROL=$as/_testbed
AS_CLIENT_ID=test-client
AS_CLIENT_SECRET=test-secret
AS_PUBLIC_CLIENT_ID=smart-app
AS_INTROSPECT_CLIENT_ID=smartgate
AS_INTROSPECT_CLIENT_SECRET=smartgate-secret
TESTBED_DATA=$DIR/data
TESTBED_DATA_LOADED=$LOAD_DATA
WATCHDOG_PID=$(pid_of watchdog)
EOF
  mv "$DIR/env.tmp" "$DIR/env"
}

do_start() {
  [[ -x "$HFS_BIN" ]] || die "hfs not found at $HFS_BIN: run scripts/install-deps.sh"
  [[ -s "$SEARCH_PARAMS" ]] || die "search parameters missing at $SEARCH_PARAMS: run scripts/install-deps.sh"
  [[ -d "$HERE/authserver/node_modules/oidc-provider" ]] || die "authserver deps missing: run scripts/install-deps.sh"
  if [[ -f "$DIR/env" ]] && ours "$(pid_of hfs)" hfs && ours "$(pid_of as)" server.mjs; then
    log "already running in $DIR"; cat "$DIR/env"; return 0
  fi
  do_stop 2>/dev/null || true
  local t0=$SECONDS
  start_as || { log "authorization server failed to start"; tail_logs "$DIR/as.log"; do_stop; exit 1; }
  start_hfs || { log "hfs failed to start"; tail_logs "$DIR/hfs.log"; do_stop; exit 1; }
  if [[ "$LOAD_DATA" == 1 ]]; then
    load_data "http://127.0.0.1:$HFS_PORT" || { log "data load failed"; tail_logs "$DIR/load.log" "$DIR/hfs.log"; do_stop; exit 1; }
  fi
  if [[ -n "$WATCH_PID" ]]; then
    kill -0 "$WATCH_PID" 2>/dev/null || { log "--watch-pid $WATCH_PID is not running"; do_stop; exit 1; }
    setsid "$HERE/testbed.sh" _watchdog --dir "$DIR" "$WATCH_PID" "$(pid_of hfs)" >"$DIR/watchdog.log" 2>&1 </dev/null &
    echo $! > "$DIR/watchdog.pid"
  fi
  write_env
  log "ready in $((SECONDS - t0))s: FHIR_BASE=http://127.0.0.1:$HFS_PORT AS_ISSUER=http://127.0.0.1:$AS_PORT env=$DIR/env"
}

do_status() {
  local rc=0 hfs_pid as_pid
  hfs_pid="$(pid_of hfs)"; as_pid="$(pid_of as)"
  [[ -f "$DIR/env" ]] || { echo "no bed in $DIR"; return 3; }
  # shellcheck disable=SC1091
  source "$DIR/env"
  if ours "$hfs_pid" hfs && curl -fsS -o /dev/null --max-time 3 "$FHIR_BASE/metadata"; then
    echo "hfs: up   pid=$hfs_pid $FHIR_BASE"; else echo "hfs: DOWN pid=$hfs_pid $FHIR_BASE"; rc=1; fi
  if ours "$as_pid" server.mjs && curl -fsS -o /dev/null --max-time 3 "$AS_DISCOVERY"; then
    echo "as:  up   pid=$as_pid $AS_ISSUER"; else echo "as:  DOWN pid=$as_pid $AS_ISSUER"; rc=1; fi
  local wd; wd="$(pid_of watchdog)"
  if [[ -n "$wd" ]]; then ours "$wd" _watchdog && echo "watchdog: up pid=$wd" || echo "watchdog: gone"; fi
  return $rc
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  env) [[ -f "$DIR/env" ]] || die "no bed running in $DIR"; cat "$DIR/env" ;;
  # Internal: wait for the watched pid (REST[0]) to exit, then stop the bed, unless the bed (hfs pid REST[1]) is
  # already gone. Started by `start --watch-pid`.
  _watchdog)
    while kill -0 "${REST[0]}" 2>/dev/null && kill -0 "${REST[1]}" 2>/dev/null; do sleep 1; done
    if kill -0 "${REST[1]}" 2>/dev/null; then log "watched pid ${REST[0]} exited: stopping the bed"; do_stop; fi ;;
  mint) exec "$HERE/mint-token.sh" --dir "$DIR" "${REST[@]}" ;;
  *) die "unknown command $cmd (start|stop|status|env|mint)" ;;
esac
