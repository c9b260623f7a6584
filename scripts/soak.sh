#!/usr/bin/env bash
# Soak test (not part of cargo test): mixed traffic through smartgate in front of the real test bed
# for SOAK_SECONDS (default 600), with a JWKS rotation (old key dropped) every minute, then a report of
# unexpected answers by kind and of RSS over time (sampled every 10 s), flagging growth beyond noise.
#
#   scripts/soak.sh                      # 10 minutes
#   SOAK_SECONDS=60 scripts/soak.sh      # a quick proof
#
# Env: SOAK_SECONDS, SOAK_CONNECTIONS (16), SOAK_THREADS (2), SMARTGATE_BIN (default: cargo build, debug),
#      SMARTGATE_TESTBED_DIR (reuse a running bed; default: start one, stopped on exit),
#      SOAK_RELOAD_SIGNAL (e.g. HUP: sent to smartgate every minute once policy reloading exists; unset by
#      default because a signal smartgate does not handle would stop it),
#      SOAK_OUT (report directory, default bench-results/soak-<timestamp>).
# Needs wrk (apt-get install wrk), python3, curl. Exit status: 0 clean, 1 unexpected answers or RSS growth.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SECONDS_TOTAL="${SOAK_SECONDS:-600}"
CONNS="${SOAK_CONNECTIONS:-16}"
THREADS="${SOAK_THREADS:-2}"
OUT="${SOAK_OUT:-$ROOT/bench-results/soak-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
log() { printf '[soak %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[soak] error: %s\n' "$*" >&2; exit 2; }
command -v wrk >/dev/null || die "wrk not found (apt-get install -y wrk)"

PIDS_TO_STOP=()
cleanup() {
  for p in "${PIDS_TO_STOP[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -n "${OWN_BED:-}" ]]; then scripts/testbed.sh stop --dir "$OWN_BED" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# --- test bed
if [[ -n "${SMARTGATE_TESTBED_DIR:-}" && -f "$SMARTGATE_TESTBED_DIR/env" ]]; then
  BED="$SMARTGATE_TESTBED_DIR"
else
  scripts/install-deps.sh >/dev/null
  OWN_BED="$OUT/bed"; BED="$OWN_BED"
  log "starting the test bed in $BED"
  scripts/testbed.sh start --dir "$BED" --watch-pid $$ >/dev/null
fi
# shellcheck disable=SC1091
source "$BED/env"

# --- smartgate
if [[ -z "${SMARTGATE_BIN:-}" ]]; then
  log "building smartgate (debug)"
  cargo build --quiet --bin smartgate
  SMARTGATE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/smartgate"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PORT="$(free_port)"; ADMIN="$(free_port)"
BASE="http://127.0.0.1:$PORT/fhir"
printf '%s' "$AS_INTROSPECT_CLIENT_SECRET" > "$OUT/introspection-secret"
cat > "$OUT/smartgate.yaml" <<YAML
listen: 127.0.0.1:$PORT
admin_listen: 127.0.0.1:$ADMIN
public_base_url: $BASE
upstream:
  url: $FHIR_BASE
  timeout: 10s
auth:
  jwt:
    issuer: $AS_ISSUER
    jwks_uri: $AS_JWKS
    unknown_kid_cooldown: 5s
  introspection:
    endpoint: $AS_INTROSPECT
    client_id: $AS_INTROSPECT_CLIENT_ID
    client_secret_file: $OUT/introspection-secret
audit:
  output: $OUT/audit.log
YAML
"$SMARTGATE_BIN" serve --config "$OUT/smartgate.yaml" >/dev/null 2>"$OUT/smartgate.stderr" &
SG_PID=$!
PIDS_TO_STOP+=("$SG_PID")
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/healthz" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/healthz" || die "smartgate did not start: $(cat "$OUT/smartgate.stderr")"
log "smartgate pid $SG_PID on $BASE, $SECONDS_TOTAL s of traffic, report in $OUT"

# --- RSS sampler: elapsed seconds, VmRSS kB, open fds
( start=$(date +%s)
  while kill -0 "$SG_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SG_PID/status" 2>/dev/null || echo 0)
    fds=$(ls "/proc/$SG_PID/fd" 2>/dev/null | wc -l)
    echo "$(( $(date +%s) - start )) $rss $fds"
    sleep 10
  done ) > "$OUT/rss.txt" &
PIDS_TO_STOP+=("$!")

mint() { TESTBED_ENV="$BED/env" scripts/mint-token.sh --aud "$BASE" "$@"; }

# One wrk segment (<= 60 s) with freshly minted tokens of every kind; each request shape carries the
# status it must get, and the Lua script counts (shape, status) pairs.
segment() {
  local secs="$1" n="$2"
  local jwt_patient jwt_user jwt_system opaque_patient
  jwt_patient="$(mint --scope 'launch/patient patient/*.rs openid fhirUser' --patient pt-01)"
  jwt_user="$(mint --scope 'user/*.rs openid fhirUser' --fhir-user Practitioner/prac-01)"
  jwt_system="$(mint --scope 'system/*.rs')"
  opaque_patient="$(mint --scope 'launch/patient patient/Observation.rs patient/Patient.rs' --patient pt-02 --opaque)"
  cat > "$OUT/segment.lua" <<LUA
local shapes = {
  {"jwt-patient read own",        "/fhir/Patient/pt-01",                         "$jwt_patient", 200},
  {"jwt-patient search own",      "/fhir/Observation?patient=pt-01&_count=20",   "$jwt_patient", 200},
  {"jwt-patient read other",      "/fhir/Patient/pt-02",                         "$jwt_patient", 404},
  {"jwt-patient search other",    "/fhir/Observation?patient=pt-02",             "$jwt_patient", 403},
  {"jwt-patient compartment",     "/fhir/Patient/pt-01/Condition",               "$jwt_patient", 200},
  {"jwt-user search",             "/fhir/Patient?_count=5",                      "$jwt_user",    200},
  {"jwt-user read missing",       "/fhir/Observation/does-not-exist",            "$jwt_user",    404},
  {"jwt-system search",           "/fhir/Condition?_count=10",                   "$jwt_system",  200},
  {"opaque-patient search own",   "/fhir/Observation?patient=pt-02&_count=10",   "$opaque_patient", 200},
  {"opaque-patient read other",   "/fhir/Patient/pt-01",                         "$opaque_patient", 404},
  {"no token",                    "/fhir/Patient/pt-01",                         "",             401},
  {"forged token",                "/fhir/Patient/pt-01",                         "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln", 401},
  {"bad path",                    "/fhir/Patient/%2e%2e/x",                      "$jwt_user",    400},
  {"metadata",                    "/fhir/metadata",                              "",             200},
}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {}; i = math.random(#shapes) end
function request()
  i = (i % #shapes) + 1
  local h = {}
  if shapes[i][3] ~= "" then h["Authorization"] = "Bearer " .. shapes[i][3] end
  h["Accept"] = "application/fhir+json"
  -- smartgate echoes X-Request-Id: it ties each response to its request shape.
  h["X-Request-Id"] = "soak-" .. i
  return wrk.format("GET", shapes[i][2], h)
end
function response(status, headers, body)
  local id = headers["x-request-id"] or headers["X-Request-Id"] or ""
  local shape = shapes[tonumber(string.match(id, "^soak%-(%d+)$") or "0")]
  local key
  if shape then key = shape[1] .. "|" .. shape[4] .. "|" .. status
  else key = "unknown shape (no request id)|0|" .. status end
  counts[key] = (counts[key] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  local f = io.open("$OUT/segment-$n.counts", "w")
  for k, v in pairs(total) do f:write(k .. "|" .. v .. "\n") end
  f:write("wrk-errors|0|connect|" .. summary.errors.connect .. "\n")
  f:write("wrk-errors|0|read|" .. summary.errors.read .. "\n")
  f:write("wrk-errors|0|write|" .. summary.errors.write .. "\n")
  f:write("wrk-errors|0|timeout|" .. summary.errors.timeout .. "\n")
  f:write("latency-p99-ms|0|" .. (latency:percentile(99) / 1000) .. "|0\n")
  f:close()
end
LUA
  wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 15s -s "$OUT/segment.lua" "http://127.0.0.1:$PORT" \
    > "$OUT/segment-$n.wrk" 2>&1 || true
}

n=0; remaining="$SECONDS_TOTAL"
while (( remaining > 0 )); do
  secs=$(( remaining < 60 ? remaining : 60 ))
  n=$((n + 1))
  log "segment $n: ${secs}s"
  segment "$secs" "$n"
  remaining=$(( remaining - secs ))
  kill -0 "$SG_PID" 2>/dev/null || die "smartgate died: $(tail -5 "$OUT/smartgate.stderr")"
  if (( remaining > 0 )); then
    kty=$([[ $((n % 2)) == 0 ]] && echo RSA || echo EC)
    curl -fsS -X POST "$AS_CONTROL/rotate?kty=$kty&drop_old=1" -o /dev/null && log "JWKS rotated ($kty, old key dropped)"
    if [[ -n "${SOAK_RELOAD_SIGNAL:-}" ]]; then kill -"$SOAK_RELOAD_SIGNAL" "$SG_PID" && log "sent SIG$SOAK_RELOAD_SIGNAL (policy reload)"; fi
  fi
done
sleep 1

python3 - "$OUT" "$SG_PID" <<'PY'
import collections, glob, os, statistics, sys
out, pid = sys.argv[1], sys.argv[2]
by_kind = collections.Counter(); unexpected = collections.Counter(); wrk_errors = collections.Counter(); p99 = []
for f in sorted(glob.glob(os.path.join(out, "segment-*.counts"))):
    for line in open(f):
        parts = line.strip().split("|")
        if parts[0] == "wrk-errors":
            wrk_errors[parts[2]] += int(parts[3]); continue
        if parts[0] == "latency-p99-ms":
            p99.append(float(parts[2])); continue
        shape, want, got, n = parts[0], parts[1], parts[2], int(parts[3])
        by_kind[shape] += n
        if want != got:
            unexpected[f"{shape}: expected {want}, got {got}"] += n
total = sum(by_kind.values())
print(f"\n=== soak report ({out})")
print(f"requests: {total}   p99 latency per segment (ms): {', '.join(f'{x:.0f}' for x in p99)}")
for k, v in sorted(by_kind.items()):
    print(f"  {v:8d}  {k}")
print("unexpected answers by kind:" + ("" if unexpected else " none"))
for k, v in unexpected.most_common():
    print(f"  {v:8d}  {k}")
print("transport errors (wrk): " + ", ".join(f"{k}={v}" for k, v in sorted(wrk_errors.items())))
samples = [tuple(map(int, l.split())) for l in open(os.path.join(out, "rss.txt")) if l.strip()]
print("RSS over time (s: MB, fds): " + "  ".join(f"{t}: {r/1024:.1f}, {fd}" for t, r, fd in samples))
flag = False
if len(samples) >= 6:
    third = len(samples) // 3
    early = statistics.median(r for _, r, _ in samples[1:third + 1])  # after warm-up
    late = statistics.median(r for _, r, _ in samples[-third:])
    growth = late - early
    print(f"RSS median early {early/1024:.1f} MB, late {late/1024:.1f} MB, growth {growth/1024:+.1f} MB")
    if growth > max(0.2 * early, 16 * 1024):
        print("FLAG: RSS grew beyond noise (>20% and >16 MB)"); flag = True
    fd_growth = samples[-1][2] - samples[1][2]
    if fd_growth > 64:
        print(f"FLAG: open descriptors grew by {fd_growth}"); flag = True
else:
    print("RSS: too few samples to judge growth (run longer than 60 s)")
alive = os.path.exists(f"/proc/{pid}")
print(f"smartgate alive at the end: {alive}")
bad = unexpected or not alive or flag or sum(wrk_errors.values()) > 0
print("RESULT: " + ("PROBLEMS FOUND" if bad else "clean"))
sys.exit(1 if bad else 0)
PY
