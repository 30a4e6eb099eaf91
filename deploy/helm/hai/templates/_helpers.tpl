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

{{/* fs3's cluster secret and admin token: a Secret named by the user, or the chart's. */}}
{{- define "hai.fs3SecretName" -}}
{{ .Values.fs3.security.existingSecret | default (printf "%s-fs3-secret" (include "hai.fullname" .)) }}
{{- end -}}

{{- define "hai.fs3AdminSecretName" -}}
{{ .Values.fs3.auth.existingSecret | default (printf "%s-fs3-admin" (include "hai.fullname" .)) }}
{{- end -}}

{{/* The cluster secret for an fs3 service pod (mgmtd, meta, storage). fs3 refuses a secret
file group or others may read, and a Secret volume of a pod with fsGroup is always 0440
(kubernetes/kubernetes#57923): an init container copies it, 0400 and owned by the
service's user, into a memory-backed folder the service reads. */}}
{{- define "hai.fs3SecretInit" -}}
- name: fs3-secret
  image: {{ include "hai.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: [sh, -c, "umask 077 && cp /etc/fs3-secret/secret /run/fs3/secret"]
  volumeMounts:
    - name: fs3-secret
      mountPath: /etc/fs3-secret
      readOnly: true
    - name: fs3-run
      mountPath: /run/fs3
{{- end -}}

{{- define "hai.fs3SecretEnv" -}}
- name: FS3_SECURITY__SECRET_FILE
  value: /run/fs3/secret
{{- end -}}

{{- define "hai.fs3SecretMount" -}}
- name: fs3-run
  mountPath: /run/fs3
  readOnly: true
{{- end -}}

{{- define "hai.fs3SecretVolumes" -}}
- name: fs3-secret
  secret:
    secretName: {{ include "hai.fs3SecretName" . }}
    defaultMode: 0400
    items:
      - key: secret
        path: secret
- name: fs3-run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end -}}
