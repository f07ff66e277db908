{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "phasegate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name if it contains the chart name, else "<release>-<chart>". */}}
{{- define "phasegate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "phasegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "phasegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "phasegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "phasegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: phasegate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "phasegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "phasegate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "phasegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The executor image: executor.image, defaulting to the operator's own image. */}}
{{- define "phasegate.executorImage" -}}
{{- if .Values.executor.image.repository -}}
{{- printf "%s:%s" .Values.executor.image.repository (default (default .Chart.AppVersion .Values.image.tag) .Values.executor.image.tag) -}}
{{- else -}}
{{- include "phasegate.image" . -}}
{{- end -}}
{{- end -}}

{{/* Where executor pods ask for the commit grant: grant.url, else this release's Service. */}}
{{- define "phasegate.grantURL" -}}
{{- if .Values.grant.url -}}
{{- .Values.grant.url -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%v" (include "phasegate.fullname" .) .Release.Namespace .Values.grant.port -}}
{{- end -}}
{{- end }}
