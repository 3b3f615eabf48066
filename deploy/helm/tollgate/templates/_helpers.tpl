{{/* The chart's name, cut to the 63 characters Kubernetes allows in a label. */}}
{{- define "tollgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name for every object. */}}
{{- define "tollgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.labels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tollgate.secretName" -}}
{{- default (include "tollgate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The agent's configuration: the user's `config` with the keys the chart owns set on top, so
the ports, paths and kernel mode always match the pod spec.
*/}}
{{- define "tollgate.config" -}}
{{- $listen := printf "0.0.0.0:%v" .Values.port -}}
{{- if .Values.hostNetwork -}}
{{- $listen = printf "%s:%v" .Values.listenAddress .Values.port -}}
{{- end -}}
{{- $kernel := dict "enabled" "off" -}}
{{- if .Values.kernel.enabled -}}
{{- $kernel = dict "enabled" "auto" "pin_dir" .Values.kernel.pinDir "cgroup_root" .Values.kernel.cgroupMountPath -}}
{{- end -}}
{{- $owned := dict "listen" $listen "data_dir" "/var/lib/tollgate" "kernel" $kernel "admin" (dict "listen" (printf "0.0.0.0:%v" .Values.adminPort) "token_env" "ADMIN_TOKEN") -}}
{{- toYaml (merge $owned (deepCopy .Values.config)) -}}
{{- end -}}
