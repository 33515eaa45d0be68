{{- define "shoal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.serviceAccountName" -}}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: shoal-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: shoal
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: shoal-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The rules the controller needs in every namespace it manages. Keep in step with
     operator/shoal/kube: each verb here is one the operator sends. */}}
{{- define "shoal.namespacedRules" -}}
- apiGroups: ["shoal.dev"]
  resources: ["modeltiers", "routepolicies"]
  # Read through watches only; the operator writes nothing but their status.
  verbs: ["get", "list", "watch"]
- apiGroups: ["shoal.dev"]
  resources: ["modeltiers/status", "routepolicies/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  # create: a server-side apply of an object that does not exist yet creates it.
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  # list/watch: the operator's in-memory view (its own children, and the key names of
  # ConfigMaps a spec refers to). get: a RoutePolicy's classifier model and an evaluation
  # dataset are read when a promotion recalibrates the classifier; create/patch: also the
  # policy's <policy>-classifier ConfigMap.
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  # Read by name to check that referenced Secrets and keys exist; only key names are
  # used, values are never logged or copied into status. Deliberately not list/watch:
  # that would hand the operator every Secret of the namespace.
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["batch"]
  # Evaluation Jobs of candidate checkpoints; superseded ones are deleted.
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  # Only for tiers with autoscaling.engine keda.
  resources: ["scaledobjects"]
  verbs: ["get", "create", "patch"]
{{- end -}}
