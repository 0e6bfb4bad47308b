{{/* The chart name, overridable. */}}
{{- define "modelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name every object of the release is named after. */}}
{{- define "modelfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "modelfleet.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "modelfleet.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "modelfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelfleet
{{- end }}

{{- define "modelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "modelfleet.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default .appVersion .tag) }}
{{- end }}
{{- end }}

{{- define "modelfleet.operatorImage" -}}
{{- include "modelfleet.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.image) }}
{{- end }}

{{- define "modelfleet.runtimeImage" -}}
{{- include "modelfleet.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.runtimeImage) }}
{{- end }}

{{- define "modelfleet.federatedImage" -}}
{{- include "modelfleet.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.federatedImage) }}
{{- end }}

{{- define "modelfleet.webhookServiceName" -}}
{{- printf "%s-webhook" (include "modelfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelfleet.metricsServiceName" -}}
{{- printf "%s-metrics" (include "modelfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The webhook's serving certificate: the user's webhook.existingSecret, else the chart's. */}}
{{- define "modelfleet.webhookSecretName" -}}
{{- if .Values.webhook.existingSecret }}
{{- .Values.webhook.existingSecret }}
{{- else }}
{{- printf "%s-webhook-tls" (include "modelfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The kinds the operator reconciles, as plural resource names, from the generated CRDs. */}}
{{- define "modelfleet.plurals" -}}
{{- $plurals := list }}
{{- range $path, $_ := .Files.Glob "files/crds/modelfleet.io_*.yaml" }}
{{- $plurals = append $plurals (fromYaml ($.Files.Get $path)).spec.names.plural }}
{{- end }}
{{- join " " $plurals }}
{{- end }}

{{/* webhook.caBundle as the webhook configuration wants it, base64 of the PEM; the value may
be either the PEM itself (--set-file) or its base64. */}}
{{- define "modelfleet.webhookCABundle" -}}
{{- $value := required "webhook.caBundle is required with webhook.existingSecret: the PEM (or its base64) of the CA that signed the Secret's tls.crt" .Values.webhook.caBundle | trim }}
{{- $pem := ternary $value (b64dec $value) (hasPrefix "-----BEGIN" $value) }}
{{- if not (contains "-----BEGIN CERTIFICATE-----" $pem) }}
{{- fail "webhook.caBundle is neither a PEM certificate nor the base64 of one: set it to the CA certificate, e.g. --set-file webhook.caBundle=ca.crt" }}
{{- end }}
{{- $pem | b64enc }}
{{- end }}
