{{/* The release's name prefix of every object. */}}
{{- define "hai.fullname" -}}
{{- if contains "hai" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-hai" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hai.labels" -}}
app.kubernetes.io/name: hai
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fireflyer
{{- end -}}

{{- define "hai.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hai.tokenSecret" -}}
{{- if .Values.auth.existingSecret -}}
{{ .Values.auth.existingSecret }}
{{- else -}}
{{ include "hai.fullname" . }}-token
{{- end -}}
{{- end -}}

{{- define "hai.serverAddress" -}}
{{ include "hai.fullname" . }}-server.{{ .Release.Namespace }}.svc:{{ .Values.server.port }}
{{- end -}}

{{- define "hai.mgmtdAddress" -}}
{{ include "hai.fullname" . }}-fs3-mgmtd-0.{{ include "hai.fullname" . }}-fs3-mgmtd.{{ .Release.Namespace }}.svc:{{ .Values.fs3.mgmtd.port }}
{{- end -}}

{{/* Environment every platform process shares: the token and the job defaults. */}}
{{- define "hai.commonEnv" -}}
- name: HAI_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "hai.tokenSecret" . }}
      key: token
- name: HAI_K8S__NAMESPACE
  value: {{ .Values.jobs.namespace | quote }}
- name: HAI_K8S__IMAGE
  value: {{ .Values.jobs.image | default (include "hai.image" .) | quote }}
- name: HAI_K8S__HOST_NETWORK
  value: {{ .Values.jobs.hostNetwork | toString | quote }}
- name: HAI_K8S__SERVICE_ACCOUNT
  value: {{ .Values.jobs.serviceAccount | quote }}
- name: HAI_K8S__POLL_INTERVAL_S
  value: {{ .Values.operator.pollIntervalSeconds | toString | quote }}
{{- end -}}

{{/* Prometheus' scrape annotations for a pod serving metrics on port "." */}}
{{- define "hai.scrape" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ . | toString | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/* fs3 target ids 1..N, comma-separated, for mgmtd's --targets. */}}
{{- define "hai.fs3Targets" -}}
{{- range $i := until (int .Values.fs3.storage.targets) -}}
{{- if $i }},{{ end }}{{ add1 $i }}
{{- end -}}
{{- end -}}

{{- define "hai.podIP" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}
