#!/usr/bin/env bash
# smartgate test bed: mint an access token from the test bed's authorization server and print it.
#
#   scripts/mint-token.sh --scope 'patient/Observation.rs launch/patient' [--patient pt-01] [--fhir-user REF]
#        [--encounter ID] [--aud URL] [--opaque] [--ttl SECONDS] [--nbf SECONDS] [--alg RS256|ES256]
#        [--client ID:SECRET] [--json] [--authcode] [--dir DIR | --env FILE]
#
# Uses the client_credentials grant of test-client (any scope string passes through). With --authcode it runs the
# real authorization-code + PKCE (S256) flow of the public client smart-app instead (auto-approved; the launch
# context goes on the authorize request; launch/patient without --patient gives pt-01). --aud defaults to
# $SMARTGATE_BASE, else the bed's FHIR_BASE. --ttl <= 0 gives an already-expired JWT, --nbf N a JWT valid N s from
# now. --opaque gives an opaque token (introspection path). --json prints the whole token response.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENV_FILE="${TESTBED_ENV:-$HERE/../.testbed/env}"
SCOPE=""; ARGS=(); AUTH_ARGS=(); AUD=""; CLIENT=""; JSON=0; AUTHCODE=0
die() { printf '[mint] error: %s\n' "$*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scope) SCOPE="$2"; shift 2 ;;
    --patient) ARGS+=(--data-urlencode "patient=$2"); AUTH_ARGS+=(--data-urlencode "patient=$2"); shift 2 ;;
    --fhir-user) ARGS+=(--data-urlencode "fhirUser=$2"); AUTH_ARGS+=(--data-urlencode "fhirUser=$2"); shift 2 ;;
    --encounter) ARGS+=(--data-urlencode "encounter=$2"); AUTH_ARGS+=(--data-urlencode "encounter=$2"); shift 2 ;;
    --ttl) ARGS+=(--data-urlencode "ttl=$2"); shift 2 ;;
    --nbf) ARGS+=(--data-urlencode "nbf=$2"); shift 2 ;;
    --alg) ARGS+=(--data-urlencode "alg=$2"); shift 2 ;;
    --opaque) ARGS+=(--data-urlencode "token_format=opaque"); shift ;;
    --aud) AUD="$2"; shift 2 ;;
    --client) CLIENT="$2"; shift 2 ;;
    --json) JSON=1; shift ;;
    --authcode) AUTHCODE=1; shift ;;
    --dir) ENV_FILE="$2/env"; shift 2 ;;
    --env) ENV_FILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n "$SCOPE" ]] || die "--scope is required"
[[ -f "$ENV_FILE" ]] || die "no test bed env at $ENV_FILE (run scripts/testbed.sh start)"
# shellcheck disable=SC1090
source "$ENV_FILE"
AUD="${AUD:-${SMARTGATE_BASE:-$FHIR_BASE}}"
CLIENT="${CLIENT:-$AS_CLIENT_ID:$AS_CLIENT_SECRET}"

if [[ "$AUTHCODE" == 1 ]]; then
  # Authorization code + PKCE: follow the auto-approving interaction with a cookie jar until the redirect.
  jar="$(mktemp)"; trap 'rm -f "$jar"' EXIT
  redirect=http://127.0.0.1/callback
  verifier="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
  challenge="$(printf %s "$verifier" | openssl dgst -sha256 -binary | openssl base64 -A | tr '+/' '-_' | tr -d '=')"
  loc="$(curl -sS --max-time 10 -G -b "$jar" -c "$jar" -o /dev/null -w '%{redirect_url}' \
    -d response_type=code -d client_id="$AS_PUBLIC_CLIENT_ID" --data-urlencode "redirect_uri=$redirect" \
    --data-urlencode "scope=$SCOPE" --data-urlencode "aud=$AUD" -d state=mint -d code_challenge="$challenge" \
    -d code_challenge_method=S256 -d prompt=consent ${AUTH_ARGS[@]+"${AUTH_ARGS[@]}"} "$AS_AUTHORIZE")"
  for _ in $(seq 1 8); do
    [[ "$loc" == "$redirect"* || -z "$loc" ]] && break
    loc="$(curl -sS --max-time 10 -b "$jar" -c "$jar" -o /dev/null -w '%{redirect_url}' "$loc")"
  done
  code="$(python3 -c 'import sys, urllib.parse as u; q = u.parse_qs(u.urlparse(sys.argv[1]).query); print(q["code"][0] if "code" in q else "")' "$loc")"
  [[ -n "$code" ]] || die "authorization failed, last redirect: ${loc:-none}"
  resp="$(curl -sS --max-time 10 -d grant_type=authorization_code -d client_id="$AS_PUBLIC_CLIENT_ID" \
    --data-urlencode "code=$code" --data-urlencode "code_verifier=$verifier" --data-urlencode "redirect_uri=$redirect" \
    ${ARGS[@]+"${ARGS[@]}"} "$AS_TOKEN")" || die "token endpoint unreachable: $AS_TOKEN"
else
  resp="$(curl -sS --max-time 10 -u "$CLIENT" -d grant_type=client_credentials --data-urlencode "scope=$SCOPE" \
    --data-urlencode "resource=$AUD" ${ARGS[@]+"${ARGS[@]}"} "$AS_TOKEN")" || die "token endpoint unreachable: $AS_TOKEN"
fi
if [[ "$JSON" == 1 ]]; then printf '%s\n' "$resp"; exit 0; fi
printf '%s' "$resp" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "access_token" not in r:
    sys.exit("[mint] error: %s" % json.dumps(r))
print(r["access_token"])'
