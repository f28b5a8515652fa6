{{- define "cdi-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdi-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cdi-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdi-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cdi-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cdi-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cdi-operator
{{- end -}}

{{- define "cdi-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cdi-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the digest wins, the tag defaults to appVersion. */}}
{{- define "cdi-operator.imageRef" -}}
{{- $image := index . 0 -}}{{- $chart := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "cdi-operator.image" -}}
{{- include "cdi-operator.imageRef" (list .Values.image .Chart) -}}
{{- end -}}

{{- define "cdi-operator.runnerImage" -}}
{{- if .Values.runner.image.repository -}}
{{- include "cdi-operator.imageRef" (list .Values.runner.image .Chart) -}}
{{- else -}}
{{- include "cdi-operator.image" . -}}
{{- end -}}
{{- end -}}

{{- define "cdi-operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "cdi-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdi-operator.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "cdi-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdi-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "cdi-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdi-operator.managementApiServiceName" -}}
{{- printf "%s-management-api" (include "cdi-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "true" when the management API serves HTTPS with the chart's certificate. */}}
{{- define "cdi-operator.managementApiTls" -}}
{{- if and .Values.managementApi.enabled .Values.managementApi.tls -}}true{{- end -}}
{{- end -}}

{{/* "true" when the chart makes the serving certificate (the webhook's, also the management API's). */}}
{{- define "cdi-operator.servingCertificate" -}}
{{- if or .Values.webhook.enabled (include "cdi-operator.managementApiTls" .) -}}true{{- end -}}
{{- end -}}
