#!/usr/bin/env bash
# The README's first command: builds smartgate, starts the real test bed (hfs FHIR server +
# oidc-provider authorization server with 24 synthetic patients), runs smartgate in front of
# it, and prints ready-to-paste curl commands with freshly minted tokens. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
port=${SMARTGATE_DEMO_PORT:-8443}
admin=${SMARTGATE_DEMO_ADMIN_PORT:-9464}

scripts/install-deps.sh
cargo build --release --quiet
scripts/testbed.sh start >/dev/null
# shellcheck disable=SC1091
source .testbed/env
base="http://127.0.0.1:$port/fhir"
export SMARTGATE_BASE=$base
printf '%s' "$AS_INTROSPECT_CLIENT_SECRET" > .testbed/introspection-secret
cat > .testbed/smartgate-demo.yaml <<YAML
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
public_base_url: $base
upstream:
  url: $FHIR_BASE
auth:
  jwt:
    issuer: $AS_ISSUER
    jwks_uri: $AS_JWKS
  introspection:
    endpoint: $AS_INTROSPECT
    client_id: $AS_INTROSPECT_CLIENT_ID
    client_secret_file: $root/.testbed/introspection-secret
smart:
  authorization_endpoint: $AS_AUTHORIZE
  token_endpoint: $AS_TOKEN
  introspection_endpoint: $AS_INTROSPECT
  revocation_endpoint: $AS_REVOKE
audit:
  output: $root/.testbed/audit.log
# The operation allow-list (\$everything, and Bulk Data \$export at system, Patient and Group
# level for backend services) and the bulk example's rules.
policies:
  - $root/policies/examples/operations.yaml
  - $root/policies/examples/bulk-export.yaml
YAML
target/release/smartgate check --config .testbed/smartgate-demo.yaml
target/release/smartgate serve --config .testbed/smartgate-demo.yaml 2> .testbed/smartgate.log &
sg=$!
cleanup() { kill "$sg" 2>/dev/null || true; wait "$sg" 2>/dev/null || true; scripts/testbed.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "smartgate did not become ready:"; tail .testbed/smartgate.log; exit 1; }

tok=$(scripts/mint-token.sh --scope 'launch/patient patient/Patient.rs patient/Observation.rs' --patient pt-01)
cat <<TXT

smartgate is running on $base (admin: http://127.0.0.1:$admin/metrics), in front of
hfs at $FHIR_BASE. Audit trail: .testbed/audit.log. A token for patient pt-01 with
scopes "launch/patient patient/Patient.rs patient/Observation.rs":

TOKEN=$tok

# 1. allowed: pt-01 reads their own record (200)
curl -s -H "Authorization: Bearer \$TOKEN" $base/Patient/pt-01

# 2. rejected: pt-01 reads another patient's record (404, the same answer as for an id that does not exist)
curl -s -H "Authorization: Bearer \$TOKEN" $base/Patient/pt-02

# 3. filtered: a search with no patient is pinned to pt-01; _include of the performer
#    (another patient, pt-04, for pt-03's records) is filtered out
curl -s -H "Authorization: Bearer \$TOKEN" "$base/Observation?_count=5&_include=Observation:performer"

# no token at all (401), and SMART discovery (no token needed)
curl -si $base/Observation | head -5
curl -s $base/.well-known/smart-configuration

# Bulk Data export as a backend service (system/ scopes, client_credentials): kick-off,
# then poll the signed status URL until the manifest; see README "Backend services"
BULK=\$(scripts/mint-token.sh --scope 'system/Patient.rs system/Observation.rs')
curl -si -H "Authorization: Bearer \$BULK" -H 'Prefer: respond-async' "$base/Patient/\\\$export" | grep -i content-location

# mint more tokens: scripts/mint-token.sh --scope 'patient/*.rs launch/patient' --patient pt-03 [--opaque]
# (run "source .testbed/env; export SMARTGATE_BASE=$base" first)

Ctrl-C stops smartgate and the test bed.
TXT
wait "$sg"
