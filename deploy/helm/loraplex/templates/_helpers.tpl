{{/* Names */}}
{{- define "loraplex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loraplex.fullname" -}}
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

{{- define "loraplex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loraplex.labels" -}}
helm.sh/chart: {{ include "loraplex.chart" . }}
{{ include "loraplex.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "loraplex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraplex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The engine type the endpoint picker maps metric names by. */}}
{{- define "loraplex.engineType" -}}
{{- if .Values.engine.type }}{{ .Values.engine.type }}{{ else if .Values.server.metricsVllmNames }}vllm{{ else }}loraplex{{ end }}
{{- end }}

{{/* Labels of the pods: the selector labels, the engine label, the pool's extra labels, podLabels. */}}
{{- define "loraplex.podLabels" -}}
{{ include "loraplex.selectorLabels" . }}
{{ .Values.engine.labelKey }}: {{ include "loraplex.engineType" . | quote }}
{{- with .Values.inferencePool.extraMatchLabels }}
{{ toYaml . }}
{{- end }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Drain timings, all from drain.* (see values.yaml). */}}
{{- define "loraplex.shutdownGraceMs" -}}
{{- mul (int .Values.drain.gracePeriodSeconds) 1000 }}
{{- end }}

{{- define "loraplex.terminationGracePeriodSeconds" -}}
{{- add (int .Values.drain.preStopSleepSeconds) (int .Values.drain.gracePeriodSeconds) (int .Values.drain.marginSeconds) }}
{{- end }}

{{/* Liveness failureThreshold: at least the configured one, and enough that failureThreshold * periodSeconds outlasts the termination window. */}}
{{- define "loraplex.livenessFailureThreshold" -}}
{{- $period := int .Values.probes.liveness.periodSeconds }}
{{- $window := int (include "loraplex.terminationGracePeriodSeconds" .) }}
{{- $needed := add (div (add $window $period -1) $period) 1 }}
{{- max (int .Values.probes.liveness.failureThreshold) $needed }}
{{- end }}

{{- define "loraplex.startupFailureThreshold" -}}
{{- $period := int .Values.probes.startup.periodSeconds }}
{{- div (add (int .Values.probes.startup.maxStartupSeconds) $period -1) $period }}
{{- end }}

{{/* Secret and claims */}}
{{- define "loraplex.secretName" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecret }}{{ else }}{{ include "loraplex.fullname" . }}{{ end }}
{{- end }}

{{/* Whether the chart creates a Secret: no existingSecret and at least one value set. */}}
{{- define "loraplex.createSecret" -}}
{{- if and (not .Values.auth.existingSecret) (or .Values.auth.apiKeys .Values.auth.adminToken .Values.auth.metricsKey) }}true{{ end }}
{{- end }}

{{- define "loraplex.adapterClaim" -}}
{{- if .Values.adapterStore.existingClaim }}{{ .Values.adapterStore.existingClaim }}{{ else }}{{ include "loraplex.fullname" . }}-adapters{{ end }}
{{- end }}

{{- define "loraplex.cacheClaim" -}}
{{- if .Values.graphCache.persistence.existingClaim }}{{ .Values.graphCache.persistence.existingClaim }}{{ else }}{{ include "loraplex.fullname" . }}-cache{{ end }}
{{- end }}

{{- define "loraplex.inferencePoolName" -}}
{{- default (include "loraplex.fullname" .) .Values.inferencePool.name }}
{{- end }}

{{/* Refuses value combinations that cannot work. */}}
{{- define "loraplex.validate" -}}
{{- $replicas := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}{{ $replicas = int .Values.autoscaling.maxReplicas }}{{ end }}
{{- if and .Values.adapterStore.enabled (not .Values.adapterStore.existingClaim) }}
{{- $mode := .Values.adapterStore.accessMode }}
{{- if and (eq $mode "ReadWriteOncePod") (gt $replicas 1) }}
{{- fail "adapterStore.accessMode ReadWriteOncePod allows one pod: set replicaCount 1 (no autoscaling), or use ReadWriteMany" }}
{{- end }}
{{- if and (eq $mode "ReadWriteOnce") (gt $replicas 1) (not .Values.nodeSelector) (not .Values.affinity) }}
{{- fail "adapterStore.accessMode ReadWriteOnce: only pods on one node can mount it; run one replica, pin the replicas to one node (nodeSelector or affinity), or use ReadWriteMany" }}
{{- end }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.server.metricsPort) }}
{{- fail "serviceMonitor.enabled needs server.metricsPort (the keyless metrics listener it scrapes)" }}
{{- end }}
{{- if and .Values.inferencePool.enabled (not .Values.server.metricsPort) (or .Values.auth.existingSecret .Values.auth.apiKeys .Values.auth.metricsKey) }}
{{- fail "inferencePool.enabled with API keys or a metrics key needs server.metricsPort: the endpoint picker scrapes /metrics without a key" }}
{{- end }}
{{- if and .Values.server.metricsPort (eq (int .Values.server.metricsPort) (int .Values.server.port)) }}
{{- fail "server.metricsPort must differ from server.port" }}
{{- end }}
{{- if not (has .Values.drain.preStopAction (list "sleep" "exec")) }}
{{- fail "drain.preStopAction must be sleep or exec" }}
{{- end }}
{{- if not (has .Values.autoscaling.metric.type (list "Pods" "External")) }}
{{- fail "autoscaling.metric.type must be Pods or External" }}
{{- end }}
{{- range $name, $value := .Values.server.flags }}
{{- if hasPrefix "-" $name }}
{{- fail (printf "server.flags: write %s without the leading dashes" $name) }}
{{- end }}
{{- if has $name (list "port" "metrics-port" "host" "model" "adapters" "cache-dir" "shutdown-grace-ms" "metrics-vllm-names" "served-model-name" "api-key" "admin-token" "metrics-key") }}
{{- fail (printf "server.flags.%s: the chart sets --%s from its own values (see values.yaml)" $name $name) }}
{{- end }}
{{- end }}
{{- end }}
