{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "smartgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-smartgate unless the release name already contains it. */}}
{{- define "smartgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "smartgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change over a release's life (Deployment selector). */}}
{{- define "smartgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smartgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "smartgate.labels" -}}
helm.sh/chart: {{ include "smartgate.chart" . }}
{{ include "smartgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ include "smartgate.mode" . }}
{{- end }}

{{/* The deployment mode, checked: anything but standalone|sidecar stops the render. */}}
{{- define "smartgate.mode" -}}
{{- if not (has .Values.mode (list "standalone" "sidecar")) }}
{{- fail (printf "mode must be standalone or sidecar, not %q" (toString .Values.mode)) }}
{{- end }}
{{- .Values.mode }}
{{- end }}

{{- define "smartgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smartgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "smartgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Name of the Secret mounted into the pod, or "" when none is used. */}}
{{- define "smartgate.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.secrets.create }}
{{- printf "%s-secrets" (include "smartgate.fullname" .) }}
{{- end }}
{{- end }}

{{- define "smartgate.configDir" -}}/etc/smartgate{{- end }}
{{- define "smartgate.secretDir" -}}/run/secrets/smartgate{{- end }}

{{/*
Converts a smartgate duration ("250ms", "30s", "5m", "1h", "1d") to whole seconds, rounded up.
*/}}
{{- define "smartgate.durationSeconds" -}}
{{- $d := toString . | trim }}
{{- if regexMatch "^[0-9]+ms$" $d }}
{{- div (add (trimSuffix "ms" $d | int64) 999) 1000 }}
{{- else if regexMatch "^[0-9]+[smhd]$" $d }}
{{- $n := regexFind "^[0-9]+" $d | int64 }}
{{- $unit := regexFind "[smhd]$" $d }}
{{- mul $n (get (dict "s" 1 "m" 60 "h" 3600 "d" 86400) $unit) }}
{{- else }}
{{- fail (printf "config.shutdown.grace %q is not a duration like 30s, 1m" $d) }}
{{- end }}
{{- end }}

{{/*
smartgate.yaml: .Values.config plus what the chart owns (ports, sidecar upstream, policy
files, secret files). Rendered once for the ConfigMap and once for the checksum annotation.
*/}}
{{- define "smartgate.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.ports.public)) }}
{{- $_ := set $cfg "admin_listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) }}
{{- if eq (include "smartgate.mode" .) "sidecar" }}
{{- $upstream := get $cfg "upstream" | default dict }}
{{- $fhir := .Values.sidecar.fhirServer }}
{{- $_ := set $upstream "url" (printf "http://127.0.0.1:%d%s" (int $fhir.port) (default "" $fhir.basePath)) }}
{{- $_ := set $cfg "upstream" $upstream }}
{{- end }}
{{- if and .Values.policies (not (hasKey $cfg "policies")) }}
{{- $files := list }}
{{- range $file, $_ := .Values.policies }}
{{- $files = append $files (printf "%s/policies/%s" (include "smartgate.configDir" $) $file) }}
{{- end }}
{{- $_ := set $cfg "policies" $files }}
{{- end }}
{{- if include "smartgate.secretName" . }}
{{- $dir := include "smartgate.secretDir" . }}
{{- if .Values.secretKeys.pagingKey }}
{{- $paging := get $cfg "paging" | default dict }}
{{- if not (hasKey $paging "secret_file") }}
{{- $_ := set $paging "secret_file" (printf "%s/%s" $dir .Values.secretKeys.pagingKey) }}
{{- end }}
{{- $_ := set $cfg "paging" $paging }}
{{- end }}
{{- $auth := get $cfg "auth" | default dict }}
{{- $intro := get $auth "introspection" }}
{{- if and $intro .Values.secretKeys.introspectionClientSecret (not (hasKey $intro "client_secret_file")) (not (hasKey $intro "client_secret")) }}
{{- $_ := set $intro "client_secret_file" (printf "%s/%s" $dir .Values.secretKeys.introspectionClientSecret) }}
{{- end }}
{{- $upAuth := dig "upstream" "auth" dict $cfg }}
{{- if eq (toString (get $upAuth "type")) "client_credentials" }}
{{- if eq (toString (get $upAuth "client_auth")) "private_key_jwt" }}
{{- if and .Values.secretKeys.upstreamPrivateKey (not (hasKey $upAuth "private_key_file")) }}
{{- $_ := set $upAuth "private_key_file" (printf "%s/%s" $dir .Values.secretKeys.upstreamPrivateKey) }}
{{- end }}
{{- else if and .Values.secretKeys.upstreamClientSecret (not (hasKey $upAuth "client_secret_file")) }}
{{- $_ := set $upAuth "client_secret_file" (printf "%s/%s" $dir .Values.secretKeys.upstreamClientSecret) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Policy files rendered into the ConfigMap (for the optional checksum). */}}
{{- define "smartgate.policies" -}}
{{- toYaml (.Values.policies | default dict) }}
{{- end }}

{{/* Pod annotations that roll the pods when what they read at start changes. */}}
{{- define "smartgate.checksums" -}}
checksum/config: {{ include "smartgate.config" . | sha256sum }}
{{- if .Values.rollOnPolicyChange }}
checksum/policies: {{ include "smartgate.policies" . | sha256sum }}
{{- end }}
{{- if and .Values.secrets.create (not .Values.existingSecret) }}
checksum/secrets: {{ toYaml .Values.secrets | sha256sum }}
{{- end }}
{{- end }}

{{/* Fails the render when the drain cannot finish before SIGKILL. */}}
{{- define "smartgate.checkGrace" -}}
{{- $grace := include "smartgate.durationSeconds" (dig "shutdown" "grace" "30s" (.Values.config | default dict)) | int }}
{{- $preStop := int .Values.preStopSleepSeconds }}
{{- $term := int .Values.terminationGracePeriodSeconds }}
{{- if le $term (add $grace $preStop) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) + config.shutdown.grace (%ds)" $term $preStop $grace) }}
{{- end }}
{{- if eq (include "smartgate.mode" .) "sidecar" }}
{{- $fhirSleep := int .Values.sidecar.fhirServer.preStopSleepSeconds }}
{{- if ge $fhirSleep $term }}
{{- fail (printf "sidecar.fhirServer.preStopSleepSeconds (%d) must be below terminationGracePeriodSeconds (%d)" $fhirSleep $term) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The smartgate container, shared by both modes. */}}
{{- define "smartgate.container" -}}
- name: smartgate
  image: {{ include "smartgate.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve", "--config", "{{ include "smartgate.configDir" . }}/smartgate.yaml"]
  {{- with (concat (.Values.env | default list) (.Values.extraEnv | default list)) }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.ports.public }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  {{- with .Values.probes.startup }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.probes.liveness }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.probes.readiness }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if gt (int .Values.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ int .Values.preStopSleepSeconds }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: {{ include "smartgate.configDir" . }}
      readOnly: true
    {{- if include "smartgate.secretName" . }}
    - name: secrets
      mountPath: {{ include "smartgate.secretDir" . }}
      readOnly: true
    {{- end }}
    - name: tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* Pod volumes smartgate needs (config + policies, secrets, a scratch /tmp). */}}
{{- define "smartgate.volumes" -}}
- name: config
  configMap:
    name: {{ include "smartgate.fullname" . }}
    # No subPath anywhere: the kubelet then swaps updated files in atomically (policy hot-reload).
    items:
      - key: smartgate.yaml
        path: smartgate.yaml
      {{- range $file, $_ := .Values.policies }}
      - key: {{ printf "policy.%s" $file | quote }}
        path: {{ printf "policies/%s" $file | quote }}
      {{- end }}
{{- with include "smartgate.secretName" . }}
- name: secrets
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level scheduling shared by both modes. */}}
{{- define "smartgate.scheduling" -}}
{{- if .Values.affinity }}
affinity:
  {{- toYaml .Values.affinity | nindent 2 }}
{{- else if eq .Values.podAntiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "smartgate.selectorLabels" . | nindent 12 }}
{{- else if eq .Values.podAntiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "smartgate.selectorLabels" . | nindent 14 }}
{{- else if .Values.podAntiAffinity }}
{{- fail (printf "podAntiAffinity must be soft, hard or \"\", not %q" .Values.podAntiAffinity) }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
