{{/* Names and labels shared by every template of the chart. */}}

{{- define "etcdpy-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcdpy-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "etcdpy-operator.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "etcdpy-operator.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "etcdpy-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcdpy-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etcdpy-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "etcdpy-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "etcdpy-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "etcdpy-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "etcdpy-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "etcdpy-operator.peeringName" -}}
{{- default (include "etcdpy-operator.fullname" .) .Values.peeringName -}}
{{- end -}}

{{/* Fail early on value combinations the schema cannot express. */}}
{{- define "etcdpy-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "namespace") (empty .Values.watchNamespaces) -}}
{{- fail "rbac.scope=namespace needs watchNamespaces: the namespaces whose Roles the operator gets" -}}
{{- end -}}
{{- if and .Values.cluster.create .Values.watchNamespaces (not (has .Release.Namespace .Values.watchNamespaces)) -}}
{{- fail (printf "cluster.create makes an EtcdCluster in %s, which watchNamespaces does not include" .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* Rules on namespaced objects: what the operator does to run members, plus kopf's events. */}}
{{- define "etcdpy-operator.namespacedRules" -}}
# The operator's own resources: watched, patched (kopf's finalizers and annotations), status written.
- apiGroups: [etcd.etcdpy.io]
  resources: [etcdclusters, etcdbackups]
  verbs: [get, list, watch, patch, update]
- apiGroups: [etcd.etcdpy.io]
  resources: [etcdclusters/status, etcdbackups/status]
  verbs: [get, patch, update]
# One Pod and one PersistentVolumeClaim per member: created, observed, deleted (never changed in place).
- apiGroups: [""]
  resources: [pods, persistentvolumeclaims]
  verbs: [get, list, watch, create, delete]
# Backup Pods print their result (file, revision, sha256) as the last log line.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# The peer and client Services are created once; the PodDisruptionBudget follows spec.replicas.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
# TLS Secrets named in spec.tls are only read.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events about EtcdClusters (the operator's and kopf's, through the core v1 API).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if gt (int .Values.replicaCount) 1 }}
# kopf peering between operator replicas (only one of them acts).
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* Cluster-level rules kopf needs in every mode: it notices CRDs and namespaces appearing. */}}
{{- define "etcdpy-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- if and (gt (int .Values.replicaCount) 1) (empty .Values.watchNamespaces) }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
