{{/*
The chart's name.
*/}}
{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: <release>-switchyard, or the release
name alone when it already contains the chart's name.
*/}}
{{- define "switchyard.fullname" -}}
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

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "switchyard.configMapName" -}}
{{- default (include "switchyard.fullname" .) .Values.existingConfigMap }}
{{- end }}

{{/*
Whether the chart renders its own Secret: a master key or a Redis URL given
as a value rather than by an existing Secret.
*/}}
{{- define "switchyard.ownSecret" -}}
{{- if or (and .Values.masterKey.value (not .Values.masterKey.existingSecret)) (and .Values.redis.enabled .Values.redis.url (not .Values.redis.existingSecret)) -}}
true
{{- end }}
{{- end }}

{{- define "switchyard.masterKeySecretName" -}}
{{- default (include "switchyard.fullname" .) .Values.masterKey.existingSecret }}
{{- end }}

{{/*
The Secret keys: the chart's own Secret uses master-key and redis-url.
*/}}
{{- define "switchyard.masterKeySecretKey" -}}
{{- if .Values.masterKey.existingSecret }}
{{- .Values.masterKey.existingSecretKey }}
{{- else }}
{{- "master-key" }}
{{- end }}
{{- end }}

{{- define "switchyard.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecretKey }}
{{- else }}
{{- "redis-url" }}
{{- end }}
{{- end }}

{{- define "switchyard.redisSecretName" -}}
{{- default (include "switchyard.fullname" .) .Values.redis.existingSecret }}
{{- end }}

{{/*
Whether a master key reaches the pods.
*/}}
{{- define "switchyard.hasMasterKey" -}}
{{- if or .Values.masterKey.existingSecret .Values.masterKey.value -}}
true
{{- end }}
{{- end }}

{{/*
Whether the chart's `config` sets a master key (`config.policy.master_key`).
*/}}
{{- define "switchyard.configMasterKey" -}}
{{- if dig "policy" "master_key" "" (default (dict) .Values.config) -}}
true
{{- end }}
{{- end }}

{{/*
Whether a master key is known to be set: through `masterKey`, or in the
chart's `config`. (A ConfigMap of the user's may set one the chart cannot see.)
*/}}
{{- define "switchyard.anyMasterKey" -}}
{{- if or (include "switchyard.hasMasterKey" .) (include "switchyard.configMasterKey" .) -}}
true
{{- end }}
{{- end }}

{{/*
Whether Redis holds the policy state: through `redis` or `config.policy.redis`.
*/}}
{{- define "switchyard.sharedPolicy" -}}
{{- if or .Values.redis.enabled (dig "policy" "redis" "" (default (dict) .Values.config)) -}}
true
{{- end }}
{{- end }}

{{/*
Seconds between SIGTERM and SIGKILL: the value when set, else
drain_delay_ms + shutdown_timeout_ms of config.server (defaults 1000 and
30000), rounded up to seconds, plus 10 s to write spend and the request log.
*/}}
{{- define "switchyard.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $server := dict }}
{{- if and .Values.config (kindIs "map" .Values.config.server) }}
{{- $server = .Values.config.server }}
{{- end }}
{{- $drain := 1000 }}
{{- if hasKey $server "drain_delay_ms" }}
{{- $drain = int $server.drain_delay_ms }}
{{- end }}
{{- $shutdown := 30000 }}
{{- if hasKey $server "shutdown_timeout_ms" }}
{{- $shutdown = int $server.shutdown_timeout_ms }}
{{- end }}
{{- add (div (add $drain $shutdown 999) 1000) 10 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The container's environment: secrets, Redis, the local store, extraEnv.
*/}}
{{- define "switchyard.env" -}}
{{- $config := default (dict) .Values.config }}
{{- if include "switchyard.hasMasterKey" . }}
- name: SWITCHYARD_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "switchyard.masterKeySecretName" . }}
      key: {{ include "switchyard.masterKeySecretKey" . }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: SWITCHYARD_POLICY__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "switchyard.redisSecretName" . }}
      key: {{ include "switchyard.redisSecretKey" . }}
{{- if and .Values.redis.responses (not .Values.existingConfigMap) (not (dig "server" "responses_store" "" $config)) }}
{{- /* /v1/responses kept in Redis: a previous_response_id made on one pod is found on every pod. */}}
- name: SWITCHYARD_SERVER__RESPONSES_STORE
  value: redis
{{- end }}
{{- if .Values.redis.cache }}
- name: SWITCHYARD_CACHE__BACKEND
  value: redis
- name: SWITCHYARD_CACHE__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "switchyard.redisSecretName" . }}
      key: {{ include "switchyard.redisSecretKey" . }}
{{- end }}
{{- end }}
{{- if and .Values.localStore.dataDir (not (dig "policy" "data_dir" "" $config)) }}
- name: SWITCHYARD_POLICY__DATA_DIR
  value: {{ .Values.localStore.dataDir | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
