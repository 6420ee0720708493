{{/*
Prefix of every object: fullnameOverride or the release name. At most 40 characters, so that
<prefix>-standalone stays within the 52 characters a StatefulSet name may have.
*/}}
{{- define "magnetar.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "magnetar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Names of the components' objects. */}}
{{- define "magnetar.etcd.fullname" -}}{{ include "magnetar.fullname" . }}-etcd{{- end -}}
{{- define "magnetar.bookie.fullname" -}}{{ include "magnetar.fullname" . }}-bookie{{- end -}}
{{- define "magnetar.broker.fullname" -}}{{ include "magnetar.fullname" . }}-broker{{- end -}}
{{- define "magnetar.standalone.fullname" -}}{{ include "magnetar.fullname" . }}-standalone{{- end -}}

{{- define "magnetar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-magnetar" (include "magnetar.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of a component: (dict "root" $ "component" "broker"). */}}
{{- define "magnetar.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of a component's objects: (dict "root" $ "component" "broker"). */}}
{{- define "magnetar.labels" -}}
{{ include "magnetar.selectorLabels" . }}
helm.sh/chart: {{ include "magnetar.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: magnetar
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The magnetar image. */}}
{{- define "magnetar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* etcd's image: etcd.image.* falling back to image.*. */}}
{{- define "magnetar.etcd.image" -}}
{{- $repo := default .Values.image.repository .Values.etcd.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.etcd.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* DNS suffix of services: <ns>.svc.<clusterDomain>. */}}
{{- define "magnetar.svcSuffix" -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
etcd client URLs brokers and bookies use: every member by its stable DNS name (the client fails
over between them), or etcd.externalEndpoints. Comma-separated.
*/}}
{{- define "magnetar.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $name := include "magnetar.etcd.fullname" . -}}
{{- $suffix := include "magnetar.svcSuffix" . -}}
{{- $port := int .Values.etcd.clientPort -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicaCount) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s:%d" $name $i $name $suffix $port) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.externalEndpoints -}}
{{- end -}}
{{- end -}}

{{/*
One configuration value as the environment variable's text: numbers without an exponent
(values arrive as float64), lists as TOML arrays, the rest as is.
*/}}
{{- define "magnetar.envValue" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
{{- toJson $v -}}
{{- else if kindIs "map" $v -}}
{{- fail (printf "a configuration value must be a string, number, boolean or list, not a map: %v" $v) -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else -}}
{{- toString $v -}}
{{- end -}}
{{- end -}}

{{/*
Environment variable of a configuration key: (dict "section" "broker" "key" "max_connections")
→ MAGNETAR_BROKER__MAX_CONNECTIONS; a dotted key ("metadata.session_ttl_ms") names its own
section.
*/}}
{{- define "magnetar.envName" -}}
{{- $section := .section -}}
{{- $key := .key -}}
{{- if contains "." $key -}}
{{- $parts := splitn "." 2 $key -}}
{{- $section = $parts._0 -}}
{{- $key = $parts._1 -}}
{{- end -}}
{{- printf "MAGNETAR_%s__%s" (upper $section) (upper $key) -}}
{{- end -}}

{{/*
Adds a free-form config map to an env dict: (dict "env" $env "section" "broker" "config" map).
*/}}
{{- define "magnetar.addConfig" -}}
{{- $env := .env -}}
{{- $section := .section -}}
{{- range $key, $value := .config -}}
{{- $_ := set $env (include "magnetar.envName" (dict "section" $section "key" $key)) (include "magnetar.envValue" $value) -}}
{{- end -}}
{{- end -}}

{{/* Adds the [log] and [metadata]-on-etcd keys to an env dict: (dict "env" $env "root" $). */}}
{{- define "magnetar.addCommonConfig" -}}
{{- $env := .env -}}
{{- $v := .root.Values -}}
{{- $_ := set $env "MAGNETAR_LOG__LEVEL" (include "magnetar.envValue" $v.log.level) -}}
{{- end -}}

{{- define "magnetar.addEtcdConfig" -}}
{{- $env := .env -}}
{{- $v := .root.Values -}}
{{- $_ := set $env "MAGNETAR_METADATA__BACKEND" "etcd" -}}
{{- $_ := set $env "MAGNETAR_METADATA__ETCD_ENDPOINTS" (include "magnetar.etcdEndpoints" .root) -}}
{{- range $key, $value := $v.metadata -}}
{{- $_ := set $env (include "magnetar.envName" (dict "section" "metadata" "key" $key)) (include "magnetar.envValue" $value) -}}
{{- end -}}
{{- end -}}

{{/* Adds the [offload] keys to an env dict: (dict "env" $env "root" $). */}}
{{- define "magnetar.addOffloadConfig" -}}
{{- $env := .env -}}
{{- $o := .root.Values.offload -}}
{{- if $o.driver -}}
{{- range $key := list "driver" "bucket" "region" "service_endpoint" "path_style" "prefix" "threshold_bytes" "threshold_seconds" "deletion_lag_ms" -}}
{{- $value := get $o $key -}}
{{- if or (not (kindIs "string" $value)) (ne $value "") -}}
{{- $_ := set $env (printf "MAGNETAR_OFFLOAD__%s" (upper $key)) (include "magnetar.envValue" $value) -}}
{{- end -}}
{{- end -}}
{{- if eq (lower $o.driver) "filesystem" -}}
{{- $_ := set $env "MAGNETAR_OFFLOAD__DIRECTORY" $o.filesystem.directory -}}
{{- end -}}
{{- if and (has (lower $o.driver) (list "gcs" "google-cloud-storage")) $o.gcs.existingSecret -}}
{{- $_ := set $env "MAGNETAR_OFFLOAD__SERVICE_ACCOUNT_PATH" (printf "/etc/magnetar/gcs/%s" $o.gcs.key) -}}
{{- end -}}
{{- if and (eq (lower $o.driver) "azureblob") $o.azure.account -}}
{{- $_ := set $env "MAGNETAR_OFFLOAD__AZURE_ACCOUNT" $o.azure.account -}}
{{- end -}}
{{- include "magnetar.addConfig" (dict "env" $env "section" "offload" "config" $o.config) -}}
{{- end -}}
{{- end -}}

{{/* Offload secrets as env entries of a container (S3 keys, Azure key). */}}
{{- define "magnetar.offloadSecretEnv" -}}
{{- $o := .Values.offload -}}
{{- if and $o.driver $o.credentials.existingSecret (has (lower $o.driver) (list "s3" "aws-s3")) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $o.credentials.existingSecret }}
      key: {{ $o.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $o.credentials.existingSecret }}
      key: {{ $o.credentials.secretAccessKeyKey }}
{{- end }}
{{- if and $o.driver $o.azure.existingSecret (eq (lower $o.driver) "azureblob") }}
- name: MAGNETAR_OFFLOAD__AZURE_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $o.azure.existingSecret }}
      key: {{ $o.azure.accessKeyKey }}
{{- end }}
{{- end -}}

{{/* Offload volumes (GCS key file, shared filesystem directory): (dict "root" $ "mounts" bool). */}}
{{- define "magnetar.offloadVolumes" -}}
{{- $o := .root.Values.offload -}}
{{- $driver := lower (default "" $o.driver) -}}
{{- if and (has $driver (list "gcs" "google-cloud-storage")) $o.gcs.existingSecret }}
{{- if .mounts }}
- name: offload-gcs
  mountPath: /etc/magnetar/gcs
  readOnly: true
{{- else }}
- name: offload-gcs
  secret:
    secretName: {{ $o.gcs.existingSecret }}
{{- end }}
{{- end }}
{{- if and (eq $driver "filesystem") $o.filesystem.existingClaim }}
{{- if .mounts }}
- name: offload-fs
  mountPath: {{ $o.filesystem.directory }}
{{- else }}
- name: offload-fs
  persistentVolumeClaim:
    claimName: {{ $o.filesystem.existingClaim }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Rendered configuration of each component: the data of its ConfigMap (YAML), also hashed into
the pods' checksum/config annotation.
*/}}
{{- define "magnetar.broker.config" -}}
{{- $v := .Values -}}
{{- $env := dict -}}
{{- include "magnetar.addCommonConfig" (dict "env" $env "root" .) -}}
{{- include "magnetar.addEtcdConfig" (dict "env" $env "root" .) -}}
{{- $_ := set $env "MAGNETAR_BROKER__BIND_ADDRESS" "0.0.0.0" -}}
{{- range $key := list "port" "admin_port" "ensemble_size" "write_quorum" "ack_quorum" -}}
{{- $_ := set $env (printf "MAGNETAR_BROKER__%s" (upper $key)) (include "magnetar.envValue" (get $v.broker $key)) -}}
{{- end -}}
{{- $drain := sub (sub (int $v.broker.terminationGracePeriodSeconds) (int $v.broker.preStopSleepSeconds)) 5 -}}
{{- $_ := set $env "MAGNETAR_BROKER__BROKER_SHUTDOWN_TIMEOUT_MS" (toString (mul (max $drain 1) 1000)) -}}
{{- include "magnetar.addOffloadConfig" (dict "env" $env "root" .) -}}
{{- include "magnetar.addConfig" (dict "env" $env "section" "broker" "config" $v.broker.config) -}}
{{- toYaml $env -}}
{{- end -}}

{{- define "magnetar.bookie.config" -}}
{{- $v := .Values -}}
{{- $env := dict -}}
{{- include "magnetar.addCommonConfig" (dict "env" $env "root" .) -}}
{{- include "magnetar.addEtcdConfig" (dict "env" $env "root" .) -}}
{{- $_ := set $env "MAGNETAR_BOOKIE__BIND_ADDRESS" "0.0.0.0" -}}
{{- range $key := list "port" "http_port" "data_dir" -}}
{{- $_ := set $env (printf "MAGNETAR_BOOKIE__%s" (upper $key)) (include "magnetar.envValue" (get $v.bookie $key)) -}}
{{- end -}}
{{- if $v.bookie.zone -}}
{{- $_ := set $env "MAGNETAR_BOOKIE__ZONE" $v.bookie.zone -}}
{{- end -}}
{{- include "magnetar.addConfig" (dict "env" $env "section" "bookie" "config" $v.bookie.config) -}}
{{- toYaml $env -}}
{{- end -}}

{{- define "magnetar.standalone.config" -}}
{{- $v := .Values -}}
{{- $env := dict -}}
{{- include "magnetar.addCommonConfig" (dict "env" $env "root" .) -}}
{{- $_ := set $env "MAGNETAR_STANDALONE__DATA_DIR" "/data/magnetar" -}}
{{- $_ := set $env "MAGNETAR_STANDALONE__BIND_ADDRESS" "0.0.0.0" -}}
{{- $_ := set $env "MAGNETAR_STANDALONE__BROKER_PORT" (include "magnetar.envValue" $v.standalone.broker_port) -}}
{{- $_ := set $env "MAGNETAR_STANDALONE__ADMIN_PORT" (include "magnetar.envValue" $v.standalone.admin_port) -}}
{{- $advertised := default (printf "%s.%s" (include "magnetar.standalone.fullname" .) (include "magnetar.svcSuffix" .)) $v.standalone.advertisedAddress -}}
{{- $_ := set $env "MAGNETAR_BROKER__ADVERTISED_ADDRESS" $advertised -}}
{{- include "magnetar.addOffloadConfig" (dict "env" $env "root" .) -}}
{{- if and (eq (lower (default "" $v.offload.driver)) "filesystem") (not $v.offload.filesystem.existingClaim) -}}
{{- $_ := set $env "MAGNETAR_OFFLOAD__DIRECTORY" "/data/magnetar/offload" -}}
{{- end -}}
{{- include "magnetar.addConfig" (dict "env" $env "section" "standalone" "config" $v.standalone.config) -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Pod anti-affinity of a component: (dict "root" $ "component" "bookie" "mode" "required"). */}}
{{- define "magnetar.podAntiAffinity" -}}
{{- if eq .mode "required" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "magnetar.selectorLabels" (dict "root" .root "component" .component) | nindent 10 }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "magnetar.selectorLabels" (dict "root" .root "component" .component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* prometheus.io annotations: (dict "root" $ "port" 8080). */}}
{{- define "magnetar.scrapeAnnotations" -}}
{{- if .root.Values.monitoring.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{/* The writable /tmp every magnetar container gets (the root filesystem is read-only). */}}
{{- define "magnetar.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/*
Checks between values that values.schema.json cannot express; a failure names the values and
what to do.
*/}}
{{- define "magnetar.validate" -}}
{{- $v := .Values -}}
{{- if not $v.standalone.enabled -}}
{{- $e := int $v.broker.ensemble_size -}}
{{- $w := int $v.broker.write_quorum -}}
{{- $a := int $v.broker.ack_quorum -}}
{{- if gt $w $e -}}
{{- fail (printf "\n\nbroker.write_quorum (%d) must not exceed broker.ensemble_size (%d): each entry is written to write_quorum of the ensemble's bookies (ack_quorum <= write_quorum <= ensemble_size)." $w $e) -}}
{{- end -}}
{{- if gt $a $w -}}
{{- fail (printf "\n\nbroker.ack_quorum (%d) must not exceed broker.write_quorum (%d): a publish cannot wait for more copies than are written (ack_quorum <= write_quorum <= ensemble_size)." $a $w) -}}
{{- end -}}
{{- if gt $e (int $v.bookie.replicaCount) -}}
{{- fail (printf "\n\nbroker.ensemble_size (%d) is larger than bookie.replicaCount (%d): brokers could not create any ledger. Add bookies or lower the ensemble size." $e (int $v.bookie.replicaCount)) -}}
{{- end -}}
{{- if and (not $v.etcd.enabled) (empty $v.etcd.externalEndpoints) -}}
{{- fail "\n\netcd.enabled is false but etcd.externalEndpoints is empty: give the client URLs of your etcd (e.g. [http://etcd-0.etcd:2379]) or set etcd.enabled=true." -}}
{{- end -}}
{{- if and $v.broker.autoscaling.enabled (not (and $v.broker.resources $v.broker.resources.requests $v.broker.resources.requests.cpu)) -}}
{{- fail "\n\nbroker.autoscaling.enabled needs broker.resources.requests.cpu: the HorizontalPodAutoscaler scales on CPU use relative to the request." -}}
{{- end -}}
{{- if and $v.broker.autoscaling.enabled (gt (int $v.broker.autoscaling.minReplicas) (int $v.broker.autoscaling.maxReplicas)) -}}
{{- fail (printf "\n\nbroker.autoscaling.minReplicas (%d) must not exceed broker.autoscaling.maxReplicas (%d)." (int $v.broker.autoscaling.minReplicas) (int $v.broker.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- $driver := lower (default "" $v.offload.driver) -}}
{{- if and $driver (not (has $driver (list "none" "filesystem"))) (not $v.offload.bucket) -}}
{{- fail (printf "\n\noffload.driver is %q but offload.bucket is empty: every driver but filesystem needs a bucket (the container for azureblob)." $v.offload.driver) -}}
{{- end -}}
{{- if and (eq $driver "filesystem") (not $v.standalone.enabled) (not $v.offload.filesystem.existingClaim) -}}
{{- fail "\n\noffload.driver is \"filesystem\" but offload.filesystem.existingClaim is empty: the brokers need one ReadWriteMany volume they all mount at offload.filesystem.directory (their root filesystem is read-only). Name an existing PersistentVolumeClaim, or use an object store driver." -}}
{{- end -}}
{{- if and (eq $driver "filesystem") (not $v.offload.filesystem.directory) -}}
{{- fail "\n\noffload.driver is \"filesystem\" but offload.filesystem.directory is empty." -}}
{{- end -}}
{{- end -}}
