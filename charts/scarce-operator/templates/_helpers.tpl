{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "scarce.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name when it already
contains the chart name (`helm install scarce-operator ...`), else <release>-<chart>. Cut to 63
characters because names become DNS labels; the longest suffix added is "-discovery" (10), so
a name over 53 characters is cut further where it is used.
*/}}
{{- define "scarce.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "scarce.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object (Kubernetes recommended labels). */}}
{{- define "scarce.labels" -}}
helm.sh/chart: {{ include "scarce.chart" . }}
{{ include "scarce.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scarce
{{- end }}

{{/* Labels that select the release's pods; never change them (selectors are immutable). */}}
{{- define "scarce.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scarce.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "scarce.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scarce.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The namespaces where benchmarks run, as a JSON list (use with fromJsonArray): the
benchmarkNamespaces value, or the release namespace.
*/}}
{{- define "scarce.benchmarkNamespaces" -}}
{{- if .Values.benchmarkNamespaces }}
{{- .Values.benchmarkNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest of an image value {repository, tag, digest}. */}}
{{- define "scarce.imageRef" -}}
{{- $image := index . 0 }}
{{- $context := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $context.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The KopfPeering / ClusterKopfPeering object name. */}}
{{- define "scarce.peeringName" -}}
{{- default (include "scarce.fullname" .) .Values.operator.standby.peeringName }}
{{- end }}

{{/* Name of the evaluation MinIO's StatefulSet and Service. */}}
{{- define "scarce.minioName" -}}
{{- printf "%s-minio" (include "scarce.fullname" .) }}
{{- end }}

{{/* The S3 endpoint the operator uses: the chart's MinIO, or storage.endpoint. */}}
{{- define "scarce.s3Endpoint" -}}
{{- if .Values.minio.deploy }}
{{- printf "http://%s.%s.svc:9000" (include "scarce.minioName" .) .Release.Namespace }}
{{- else }}
{{- .Values.storage.endpoint }}
{{- end }}
{{- end }}

{{/*
The store credentials of the evaluation MinIO, as a dict {accessKey, secretKey}: the values if
set, else the ones of the Secret already in the cluster (lookup; kept across upgrades), else new
random ones. `helm template` has no cluster, so it always shows random ones.
*/}}
{{- define "scarce.minioCredentials" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.storage.secret.name }}
{{- $data := dict }}
{{- if and $secret $secret.data }}
{{- $data = $secret.data }}
{{- end }}
{{- $access := .Values.minio.rootUser }}
{{- if not $access }}
{{- $access = ternary (index $data .Values.storage.secret.accessKeyKey | default "" | b64dec) (randAlphaNum 20) (hasKey $data .Values.storage.secret.accessKeyKey) }}
{{- end }}
{{- $secretKey := .Values.minio.rootPassword }}
{{- if not $secretKey }}
{{- $secretKey = ternary (index $data .Values.storage.secret.secretKeyKey | default "" | b64dec) (randAlphaNum 40) (hasKey $data .Values.storage.secret.secretKeyKey) }}
{{- end }}
{{- dict "accessKey" $access "secretKey" $secretKey | toJson }}
{{- end }}

{{/* Pod securityContext and container securityContext shared by the chart's own pods. */}}
{{- define "scarce.podSecurityContext" -}}
{{- toYaml .Values.operator.podSecurityContext }}
{{- end }}
{{- define "scarce.containerSecurityContext" -}}
{{- toYaml .Values.operator.securityContext }}
{{- end }}
