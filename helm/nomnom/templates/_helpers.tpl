{{/* Chart name, truncated for label values. */}}
{{- define "nomnom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; components append -api / -worker. */}}
{{- define "nomnom.fullname" -}}
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

{{- define "nomnom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nomnom.labels" -}}
helm.sh/chart: {{ include "nomnom.chart" . }}
app.kubernetes.io/name: {{ include "nomnom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nomnom
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "nomnom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nomnom.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "nomnom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nomnom.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image: (dict "ctx" $ "image" .Values.api.image) */}}
{{- define "nomnom.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The bundled NATS chart's fullname, as that chart computes it. */}}
{{- define "nomnom.natsFullname" -}}
{{- if .Values.nats.fullnameOverride }}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" .Values.nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* NATS URL (when not read from the Secret). */}}
{{- define "nomnom.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "nomnom.natsFullname" .) .Release.Namespace }}
{{- else }}
{{- required "externalNats.url (or externalNats.urlSecretKey) is required when nats.enabled=false" .Values.externalNats.url }}
{{- end }}
{{- end }}

{{/* host:port of the NATS monitoring endpoint, for KEDA. With the bundled cluster, the
headless service: KEDA prefixes the consumer leader's server name (its pod name) to it. */}}
{{- define "nomnom.natsMonitoringEndpoint" -}}
{{- $keda := .Values.worker.autoscaling.keda }}
{{- if $keda.natsServerMonitoringEndpoint }}
{{- $keda.natsServerMonitoringEndpoint }}
{{- else if .Values.nats.enabled }}
{{- printf "%s-headless.%s.svc.cluster.local:%v" (include "nomnom.natsFullname" .) .Release.Namespace (.Values.nats.config.monitor.port | default 8222) }}
{{- else }}
{{- required "externalNats.monitoringEndpoint (host:port) is required for KEDA when nats.enabled=false" .Values.externalNats.monitoringEndpoint }}
{{- end }}
{{- end }}

{{/* Stream replicas: explicit, else 3 with the bundled NATS cluster, else 1. */}}
{{- define "nomnom.streamReplicas" -}}
{{- if not (kindIs "invalid" .Values.stream.replicas) }}
{{- .Values.stream.replicas }}
{{- else if and .Values.nats.enabled .Values.nats.config.cluster.enabled }}
{{- min 3 (int .Values.nats.config.cluster.replicas) }}
{{- else }}
{{- 1 }}
{{- end }}
{{- end }}

{{/* Environment shared by nats-api and the worker: NATS connection and stream.
     (dict "ctx" $ "component" "api"|"worker"): each component may have its own NATS
     user (natsAuth.workerExistingSecret), with its own permissions. */}}
{{- define "nomnom.natsEnv" -}}
{{- $ctx := .ctx }}
{{- $auth := $ctx.Values.natsAuth }}
{{- $secret := include "nomnom.natsSecret" . }}
{{- if and (not $ctx.Values.nats.enabled) $ctx.Values.externalNats.urlSecretKey }}
- name: NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "natsAuth.existingSecret is required with externalNats.urlSecretKey" $auth.existingSecret }}
      key: {{ $ctx.Values.externalNats.urlSecretKey }}
{{- else }}
- name: NATS_URL
  value: {{ include "nomnom.natsUrl" $ctx | quote }}
{{- end }}
{{- if eq $auth.method "userPassword" }}
- name: NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ required "natsAuth.existingSecret is required for natsAuth.method=userPassword" $secret }}
      key: {{ $auth.keys.user }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $auth.keys.password }}
{{- else if eq $auth.method "token" }}
- name: NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "natsAuth.existingSecret is required for natsAuth.method=token" $secret }}
      key: {{ $auth.keys.token }}
{{- else if eq $auth.method "nkeySeed" }}
- name: NATS_NKEY_SEED
  valueFrom:
    secretKeyRef:
      name: {{ required "natsAuth.existingSecret is required for natsAuth.method=nkeySeed" $secret }}
      key: {{ $auth.keys.nkeySeed }}
{{- else if eq $auth.method "creds" }}
- name: NATS_CREDS
  value: /etc/nomnom/nats-creds/{{ $auth.keys.creds }}
{{- end }}
{{- if $ctx.Values.natsTls.enabled }}
- name: NATS_TLS_CA
  value: /etc/nomnom/nats-tls/{{ $ctx.Values.natsTls.caKey }}
{{- if $ctx.Values.natsTls.clientCertificate }}
- name: NATS_TLS_CERT
  value: /etc/nomnom/nats-tls/{{ $ctx.Values.natsTls.certKey }}
- name: NATS_TLS_KEY
  value: /etc/nomnom/nats-tls/{{ $ctx.Values.natsTls.keyKey }}
{{- end }}
{{- if $ctx.Values.natsTls.require }}
- name: NATS_REQUIRE_TLS
  value: "true"
{{- end }}
{{- end }}
- name: NOMNOM_STREAM
  value: {{ $ctx.Values.stream.name | quote }}
- name: NOMNOM_STREAM_REPLICAS
  value: {{ include "nomnom.streamReplicas" $ctx | quote }}
- name: NOMNOM_STREAM_MAX_AGE
  value: {{ $ctx.Values.stream.maxAge | quote }}
- name: NOMNOM_STREAM_MAX_BYTES
  value: {{ include "nomnom.scalar" $ctx.Values.stream.maxBytes | quote }}
- name: NOMNOM_DUPLICATE_WINDOW
  value: {{ $ctx.Values.stream.duplicateWindow | quote }}
{{- with $ctx.Values.stream.subjects }}
- name: NOMNOM_STREAM_SUBJECTS
  value: {{ . | quote }}
{{- end }}
{{- with $ctx.Values.stream.subjectPrefix }}
- name: NOMNOM_SUBJECT_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- with $ctx.Values.stream.bodyBucket }}
- name: NOMNOM_BODY_BUCKET
  value: {{ . | quote }}
{{- end }}
- name: NOMNOM_LOG_FORMAT
  value: {{ $ctx.Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ $ctx.Values.logLevel | quote }}
{{- end }}

{{/* Span export (tracing.otlpEndpoint), off when empty: (dict "ctx" $ "component" "api"|"worker"). */}}
{{- define "nomnom.tracingEnv" -}}
{{- $tracing := .ctx.Values.tracing }}
{{- if $tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $tracing.otlpEndpoint | quote }}
{{- $name := ternary $tracing.apiServiceName $tracing.workerServiceName (eq .component "api") }}
{{- if $name }}
- name: OTEL_SERVICE_NAME
  value: {{ $name | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nomnom.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret (a Secret holding DATABASE_URL) is required" .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}

{{/* Extra environment from a map: (dict "env" .Values.api.extraEnv) */}}
{{- define "nomnom.extraEnv" -}}
{{- range $name, $value := .env }}
- name: {{ $name }}
  value: {{ include "nomnom.scalar" $value | quote }}
{{- end }}
{{- end }}

{{/* The Secret with a component's NATS credentials: (dict "ctx" $ "component" ...). */}}
{{- define "nomnom.natsSecret" -}}
{{- $auth := .ctx.Values.natsAuth }}
{{- if and (eq .component "worker") $auth.workerExistingSecret }}
{{- $auth.workerExistingSecret }}
{{- else }}
{{- $auth.existingSecret }}
{{- end }}
{{- end }}

{{/* Volumes for NATS credentials and TLS files, when configured: (dict "ctx" $ "component" ...). */}}
{{- define "nomnom.natsVolumes" -}}
{{- $ctx := .ctx }}
{{- $secret := include "nomnom.natsSecret" . }}
{{- if eq $ctx.Values.natsAuth.method "creds" }}
- name: nats-creds
  secret:
    secretName: {{ required "natsAuth.existingSecret is required for natsAuth.method=creds" $secret }}
    defaultMode: 0440
    items:
      - key: {{ $ctx.Values.natsAuth.keys.creds }}
        path: {{ $ctx.Values.natsAuth.keys.creds }}
{{- end }}
{{- if $ctx.Values.natsTls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "natsTls.existingSecret is required with natsTls.enabled" $ctx.Values.natsTls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "nomnom.natsVolumeMounts" -}}
{{- $ctx := .ctx }}
{{- if eq $ctx.Values.natsAuth.method "creds" }}
- name: nats-creds
  mountPath: /etc/nomnom/nats-creds
  readOnly: true
{{- end }}
{{- if $ctx.Values.natsTls.enabled }}
- name: nats-tls
  mountPath: /etc/nomnom/nats-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the deployments: (dict "ctx" $ "pod" .Values.api) */}}
{{- define "nomnom.podScheduling" -}}
{{- with .pod.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A value as text: whole numbers without an exponent (Helm reads numbers as floats,
which print 1048576 as 1.048576e+06). */}}
{{- define "nomnom.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}
