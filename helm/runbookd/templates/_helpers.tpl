{{/* Names */}}
{{- define "runbookd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "runbookd.fullname" -}}
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

{{- define "runbookd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels; call with (dict "root" $ "component" "api"). */}}
{{- define "runbookd.labels" -}}
helm.sh/chart: {{ include "runbookd.chart" .root }}
{{ include "runbookd.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: runbookd
{{- end }}

{{- define "runbookd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runbookd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .pool }}
runbookd.io/worker-pool: {{ . }}
{{- end }}
{{- end }}

{{- define "runbookd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "runbookd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "runbookd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secrets and connection URLs */}}
{{- define "runbookd.secretName" -}}
{{- include "runbookd.fullname" . }}
{{- end }}

{{- define "runbookd.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "runbookd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "runbookd.redis.fullname" -}}
{{- printf "%s-redis" (include "runbookd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "runbookd.postgresql.secretName" -}}
{{- default (include "runbookd.postgresql.fullname" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{- define "runbookd.redis.secretName" -}}
{{- default (include "runbookd.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* Fail early, with the fix in the message, when a connection is not configured. */}}
{{- define "runbookd.validate" -}}
{{- if and (not .Values.postgresql.deploy) (not .Values.postgresql.external.url) (not .Values.postgresql.external.existingSecret) }}
{{- fail "postgresql: set postgresql.external.url or postgresql.external.existingSecret, or postgresql.deploy=true for an evaluation database" }}
{{- end }}
{{- if and (not .Values.redis.deploy) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) }}
{{- fail "redis: set redis.external.url or redis.external.existingSecret, or redis.deploy=true for an evaluation Redis" }}
{{- end }}
{{- if gt (int .Values.beat.replicas) 1 }}
{{- fail "beat.replicas must be 0 or 1: a second Celery beat would fire every schedule twice" }}
{{- end }}
{{- end }}

{{/*
Database and Redis environment. Bundled services get their URL assembled by the
kubelet from the password variable ($(VAR) expansion), so the generated password
lives in one Secret only. The migration hook calls databaseEnv with
(dict "root" $ "migrate" true): at pre-install the release's Secret does not
exist yet, so it reads a hook Secret of its own.
*/}}
{{- define "runbookd.databaseEnv" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- if $v.postgresql.deploy }}
- name: RUNBOOKD_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "runbookd.postgresql.secretName" $root }}
      key: password
- name: RUNBOOKD_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(RUNBOOKD_POSTGRES_PASSWORD)@%s:5432/%s" $v.postgresql.auth.username (include "runbookd.postgresql.fullname" $root) $v.postgresql.auth.database | quote }}
{{- else }}
- name: RUNBOOKD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if $v.postgresql.external.existingSecret }}
      name: {{ $v.postgresql.external.existingSecret }}
      key: {{ $v.postgresql.external.existingSecretKey }}
      {{- else }}
      name: {{ ternary (printf "%s-migrate" (include "runbookd.fullname" $root)) (include "runbookd.secretName" $root) (default false .migrate) }}
      key: database-url
      {{- end }}
{{- end }}
{{- end }}

{{- define "runbookd.redisEnv" -}}
{{- $root := . }}
{{- $v := $root.Values }}
{{- if $v.redis.deploy }}
- name: RUNBOOKD_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "runbookd.redis.secretName" $root }}
      key: password
- name: RUNBOOKD_REDIS_URL
  value: {{ printf "redis://:$(RUNBOOKD_REDIS_PASSWORD)@%s:6379/0" (include "runbookd.redis.fullname" $root) | quote }}
{{- else }}
- name: RUNBOOKD_REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- if $v.redis.external.existingSecret }}
      name: {{ $v.redis.external.existingSecret }}
      key: {{ $v.redis.external.existingSecretKey }}
      {{- else }}
      name: {{ include "runbookd.secretName" $root }}
      key: redis-url
      {{- end }}
{{- end }}
{{- end }}

{{/* Environment shared by api, workers and beat. */}}
{{- define "runbookd.env" -}}
{{- $v := .Values -}}
{{ include "runbookd.databaseEnv" (dict "root" .) | trim }}
{{ include "runbookd.redisEnv" . | trim }}
{{- $secret := default (include "runbookd.secretName" .) $v.secrets.existingSecret }}
- name: RUNBOOKD_SLACK_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: slack-signing-secret
      optional: true
- name: RUNBOOKD_MATTERMOST_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: mattermost-token
      optional: true
{{- if $v.runbooks }}
- name: RUNBOOKD_RUNBOOKS_DIR
  value: /var/lib/runbookd-runbooks
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "runbookd.envFrom" -}}
- configMapRef:
    name: {{ include "runbookd.fullname" . }}-config
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll pods when configuration or secrets change. */}}
{{- define "runbookd.podAnnotations" -}}
checksum/config: {{ printf "%s%s" (include (print .Template.BasePath "/configmap.yaml") .) (include (print .Template.BasePath "/runbooks-configmap.yaml") .) | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volumes every runbookd pod gets: the writable data dir and /tmp (the root
filesystem is read-only), plus the merged runbooks dir when values add runbooks.
*/}}
{{- define "runbookd.volumes" -}}
- name: data
  {{- with .Values.dataVolume.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ . }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.dataVolume.sizeLimit }}
  {{- end }}
- name: tmp
  emptyDir: {}
{{- if .Values.runbooks }}
- name: runbooks
  emptyDir: {}
- name: extra-runbooks
  configMap:
    name: {{ include "runbookd.fullname" . }}-runbooks
{{- end }}
{{- end }}

{{- define "runbookd.volumeMounts" -}}
- name: data
  mountPath: /var/lib/runbookd
- name: tmp
  mountPath: /tmp
{{- if .Values.runbooks }}
- name: runbooks
  mountPath: /var/lib/runbookd-runbooks
  readOnly: true
{{- end }}
{{- end }}

{{/*
Init container merging the image's shipped runbooks with those from values: the
values' files are copied last, so an id present in both replaces the shipped one.
*/}}
{{- define "runbookd.initContainers" -}}
{{- if .Values.runbooks }}
- name: runbooks
  image: {{ include "runbookd.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -ec
    - cp /app/runbooks/*.yaml /runbooks/ 2>/dev/null || true; cp -L /extra-runbooks/*.yaml /runbooks/
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 64Mi
  volumeMounts:
    - name: runbooks
      mountPath: /runbooks
    - name: extra-runbooks
      mountPath: /extra-runbooks
      readOnly: true
{{- end }}
{{- end }}

{{/* Pod spec fields shared by every runbookd pod. */}}
{{- define "runbookd.podCommon" -}}
serviceAccountName: {{ include "runbookd.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}
