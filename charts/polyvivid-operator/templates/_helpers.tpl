{{/* The release's full name: the release name, unless it already contains the chart name. */}}
{{- define "polyvivid-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "polyvivid-operator.selectorLabels" -}}
app.kubernetes.io/name: polyvivid-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "polyvivid-operator.labels" -}}
{{ include "polyvivid-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: polyvivid
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "polyvivid-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "polyvivid-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "polyvivid-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "polyvivid-operator.workloadImage" -}}
{{- printf "%s:%s" .Values.workloadImage.repository (default .Chart.AppVersion .Values.workloadImage.tag) -}}
{{- end -}}
