{{/* The release's name prefix, at most 63 characters with a component appended. */}}
{{- define "feedline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The components this release runs, as the values keys that configure them. */}}
{{- define "feedline.components" -}}
{{- $list := list "gateway" "orders" "customers" "orderView" -}}
{{- if .Values.registry.enabled -}}{{- $list = prepend $list "registry" -}}{{- end -}}
{{- toJson $list -}}
{{- end -}}

{{/* The services that scale with load (a HorizontalPodAutoscaler each). */}}
{{- define "feedline.scalable" -}}
{{- toJson (list "orders" "customers" "orderView") -}}
{{- end -}}

{{/* A component's resource name: <fullname>-order-view for orderView. */}}
{{- define "feedline.name" -}}
{{- printf "%s-%s" (include "feedline.fullname" .root) (kebabcase .component) -}}
{{- end -}}

{{- define "feedline.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ kebabcase .component }}
{{- end -}}

{{- define "feedline.labels" -}}
{{ include "feedline.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: feedline
{{- end -}}

{{- define "feedline.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "feedline.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "feedline.fullname" .)) -}}
{{- end -}}

{{- define "feedline.registryUrl" -}}
{{- if .Values.registry.enabled -}}
{{- printf "http://%s:%v" (include "feedline.name" (dict "root" . "component" "registry")) .Values.registry.port -}}
{{- else -}}
{{- required "registry.url: the external schema registry (or set registry.enabled)" .Values.registry.url -}}
{{- end -}}
{{- end -}}

{{/* A value from the Secret, as an env entry; optional, so a Secret without it leaves it unset. */}}
{{- define "feedline.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "feedline.secretName" .root }}
      key: {{ .key }}
      optional: true
{{- end -}}

{{/* The environment every feedline container shares (the topic init step too). */}}
{{- define "feedline.commonEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{ include "feedline.secretEnv" (dict "root" . "name" "FEEDLINE_KAFKA__SASL_PASSWORD" "key" "sasl-password") }}
{{ include "feedline.secretEnv" (dict "root" . "name" "FEEDLINE_REGISTRY__PASSWORD" "key" "registry-password") }}
{{- end -}}
