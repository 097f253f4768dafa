{{/* Names, labels and the image reference shared by the templates. */}}

{{- define "s3backup.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "s3backup.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects carry the release namespace: two releases of the same name in two
namespaces (e.g. one operator per team, each watching its own namespaces) must not collide. */}}
{{- define "s3backup.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "s3backup.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "s3backup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "s3backup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "s3backup.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "s3backup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: s3backup
{{- end }}

{{- define "s3backup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "s3backup.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. Argument: (list image defaultTag). */}}
{{- define "s3backup.imageRef" -}}
{{- $image := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag) -}}
{{- end -}}
{{- end }}

{{- define "s3backup.image" -}}
{{- include "s3backup.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* The backup Jobs' image: backupImage when its repository is set, else the operator's image. */}}
{{- define "s3backup.backupImage" -}}
{{- if .Values.backupImage.repository }}
{{- include "s3backup.imageRef" (list .Values.backupImage .Chart.AppVersion) }}
{{- else }}
{{- include "s3backup.image" . }}
{{- end }}
{{- end }}

{{/* A list of {name: ...} (LocalObjectReference) as "a,b". */}}
{{- define "s3backup.names" -}}
{{- $names := list }}
{{- range . }}
{{- $names = append $names .name }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{- define "s3backup.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/* Checks across values that values.schema.json cannot express; included by the Deployment. */}}
{{- define "s3backup.validate" -}}
{{- /* Several replicas are fine with kopf peering (each replica's priority derives from its pod name, the
highest acts), but without it every replica would act on every S3Backup. */}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without kopf peering every replica would act on every S3Backup" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true (the ServiceMonitor scrapes that Service)" }}
{{- end }}
{{- end }}

{{/*
A policy allowance as the operator reads it: true -> "*", false -> "", a list -> "a,b".
*/}}
{{- define "s3backup.allowance" -}}
{{- if kindIs "bool" . -}}
{{- if . }}*{{ end -}}
{{- else -}}
{{- join "," . -}}
{{- end -}}
{{- end }}
