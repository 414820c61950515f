{{/*
Names and labels.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "spool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: fullnameOverride, else the release name when it
holds the chart's name, else release-chart. Cut to 63 characters (DNS names),
leaving room for the component suffixes.
*/}}
{{- define "spool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "spool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "spool.labels" -}}
helm.sh/chart: {{ include "spool.chart" . }}
{{ include "spool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spool
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "spool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: include with (dict "ctx" $ "component" "ingress"). */}}
{{- define "spool.componentLabels" -}}
{{ include "spool.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spool.componentSelectorLabels" -}}
{{ include "spool.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The ServiceAccount of the ingress and processor pods. */}}
{{- define "spool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "spool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* The ConfigMap that holds spool.yaml. */}}
{{- define "spool.configMapName" -}}
{{- printf "%s-config" (include "spool.fullname" .) }}
{{- end }}

{{/* Partitions of the commands topic, as configured (spool's default: 12). */}}
{{- define "spool.partitions" -}}
{{- $kafka := .Values.config.kafka | default dict }}
{{- $kafka.partitions | default 12 | int }}
{{- end }}

{{/*
Checks that fail rendering with a message naming the value. Rendered from the
ConfigMap template, so every install, upgrade and `helm template` runs them.
*/}}
{{- define "spool.validate" -}}
{{- $config := .Values.config | default dict }}
{{- $db := $config.database | default dict }}
{{- if hasKey $db "url" }}
{{- fail "config.database.url must not be set in values (it holds a password): put the URL in a Secret and name it in database.existingSecret" }}
{{- end }}
{{- if not .Values.database.existingSecret }}
{{- fail "database.existingSecret must name a Secret that holds the PostgreSQL URL (key database.secretKey)" }}
{{- end }}
{{- if and (hasKey $config "http") (hasKey ($config.http | default dict) "addr") }}
{{- fail "config.http.addr is set by the chart from ingress.port: set ingress.port instead" }}
{{- end }}
{{- if and (hasKey $config "ingress") (hasKey ($config.ingress | default dict) "metrics_addr") }}
{{- fail "config.ingress.metrics_addr is set by the chart from ingress.metricsPort: set ingress.metricsPort instead" }}
{{- end }}
{{- if and (hasKey $config "metrics") (hasKey ($config.metrics | default dict) "addr") }}
{{- fail "config.metrics.addr is set by the chart from processor.metricsPort: set processor.metricsPort instead" }}
{{- end }}
{{- if and .Values.auth.existingSecret (hasKey $config "auth") }}
{{- fail "set either auth.existingSecret (the keys from a Secret) or config.auth (keys or disabled in values), not both" }}
{{- end }}
{{- $partitions := include "spool.partitions" . | int }}
{{- if gt (int .Values.processor.replicas) $partitions }}
{{- fail (printf "processor.replicas (%d) must not exceed config.kafka.partitions (%d): processors beyond the partition count sit idle" (int .Values.processor.replicas) $partitions) }}
{{- end }}
{{- end }}

{{/*
Environment common to ingress and processor: where the config file is, the
database URL from its Secret (the environment ranks above the file), and,
with auth.existingSecret, the API keys file mounted from that Secret.
*/}}
{{- define "spool.env" -}}
- name: SPOOL_CONFIG
  value: /etc/spool/spool.yaml
- name: SPOOL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- if .Values.auth.existingSecret }}
- name: SPOOL_AUTH_KEYS_FILE
  value: /etc/spool-auth/keys.yaml
{{- end }}
{{- if .Values.kafka.existingSecret }}
- name: SPOOL_KAFKA_SASL_PASSWORD_FILE
  value: /etc/spool-kafka/password
{{- end }}
{{- end }}

{{/* Volumes of ingress and processor pods: spool.yaml, the keys, /tmp. */}}
{{- define "spool.volumes" -}}
- name: config
  configMap:
    name: {{ include "spool.configMapName" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.auth.existingSecret }}
- name: auth
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    items:
      - key: {{ .Values.auth.secretKey }}
        path: keys.yaml
{{- end }}
{{- if .Values.kafka.existingSecret }}
- name: kafka
  secret:
    secretName: {{ .Values.kafka.existingSecret }}
    items:
      - key: {{ .Values.kafka.secretKey }}
        path: password
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "spool.volumeMounts" -}}
- name: config
  mountPath: /etc/spool
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.auth.existingSecret }}
- name: auth
  mountPath: /etc/spool-auth
  readOnly: true
{{- end }}
{{- if .Values.kafka.existingSecret }}
- name: kafka
  mountPath: /etc/spool-kafka
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
