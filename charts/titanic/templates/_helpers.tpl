{{/* titanic.name: the chart name, overridable with nameOverride. */}}
{{- define "titanic.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* titanic.fullname: prefix of every object name; the release name alone when it already contains the chart name. */}}
{{- define "titanic.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* titanic.chart: chart name and version for the helm.sh/chart label. */}}
{{- define "titanic.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* titanic.labels: the standard app.kubernetes.io labels every object carries. */}}
{{- define "titanic.labels" -}}
helm.sh/chart: {{ include "titanic.chart" . }}
{{ include "titanic.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: titanic-mlops
{{- end }}

{{/* titanic.selectorLabels: the immutable labels used in selectors (add app.kubernetes.io/component per workload). */}}
{{- define "titanic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "titanic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* titanic.image: "<registry/>name:tag" of a project image; tag defaults to appVersion. Call with (list . "titanic-webapp"). */}}
{{- define "titanic.image" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag }}
{{- if $root.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $name $tag }}
{{- else }}
{{- printf "%s:%s" $name $tag }}
{{- end }}
{{- end }}

{{/* titanic.serviceAccountName: name of one of the chart's ServiceAccounts. Call with (list . "pipeline"). */}}
{{- define "titanic.serviceAccountName" -}}
{{- printf "%s-%s" (include "titanic.fullname" (index . 0)) (index . 1) }}
{{- end }}

{{/* titanic.configName: the ConfigMap every pod of the project loads with envFrom. */}}
{{- define "titanic.configName" -}}
{{- printf "%s-config" (include "titanic.fullname" .) }}
{{- end }}

{{/* titanic.readOnlySecretName: the credentials of the pods that only read S3 (web app, transformer, storage initializer). */}}
{{- define "titanic.readOnlySecretName" -}}
{{- if .Values.credentials.existingSecret }}
{{- default .Values.credentials.existingSecret .Values.credentials.existingReadOnlySecret }}
{{- else }}
{{- printf "%s-secrets-read" (include "titanic.fullname" .) }}
{{- end }}
{{- end }}

{{/* titanic.secretName: the credentials Secret loaded with envFrom (existingSecret when given). */}}
{{- define "titanic.secretName" -}}
{{- default (printf "%s-secrets" (include "titanic.fullname" .)) .Values.credentials.existingSecret }}
{{- end }}

{{/* titanic.kserveUrl: in-cluster URL of the KServe transformer the web app calls. */}}
{{- define "titanic.kserveUrl" -}}
{{- printf "http://%s-transformer.%s.svc.cluster.local" .Values.inferenceService.name .Release.Namespace }}
{{- end }}

{{/* titanic.runtimeName / titanic.modelFormat: the predictor's ServingRuntime and the model format it serves. */}}
{{- define "titanic.runtimeName" -}}
{{- printf "%s-model-server" .Values.inferenceService.name }}
{{- end }}
{{- define "titanic.modelFormat" -}}
{{- printf "%s-onnx-sklearn" .Values.inferenceService.name }}
{{- end }}

{{/* titanic.modelServerProbes: start-up, readiness (the model is loaded) and liveness of a model-server container. */}}
{{- define "titanic.modelServerProbes" -}}
{{- /* Liveness starts only once the server has answered: a busy node can take a minute to import and load, and
       a liveness kill then would restart it into the same slow start (a crash loop that never serves). */}}
startupProbe:
  httpGet: {path: /v2/health/live, port: http1}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet: {path: {{ printf "/v1/models/%s" .Values.inferenceService.name | quote }}, port: http1}
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet: {path: /v2/health/live, port: http1}
  periodSeconds: 20
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* titanic.drain: a serving container keeps serving drainSeconds after its pod leaves the Service's endpoints
     (preStop runs before SIGTERM), so kube-proxy and the callers' connection pools stop sending to it first. */}}
{{- define "titanic.drain" -}}
{{- with .Values.drainSeconds }}
lifecycle:
  preStop:
    sleep: {seconds: {{ . }}}
{{- end }}
{{- end }}

{{/* titanic.credential: a generated credential kept across upgrades - the explicit value, else the value in the live Secret, else a new random one. Call with (dict "root" . "key" "S3_SECRET_KEY" "value" .Values.credentials.s3SecretKey "length" 40). */}}
{{- define "titanic.credential" -}}
{{- $root := .root }}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace (printf "%s-secrets" (include "titanic.fullname" $root)) }}
{{- $live := dig "data" .key "" $secret }}
{{- if $live }}
{{- $live | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- end }}

{{/* titanic.podSecurityContext: the non-root pod security context shared by every pod of the chart. */}}
{{- define "titanic.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* titanic.containerSecurityContext: the hardened container security context shared by every container. */}}
{{- define "titanic.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}
