{{/*
Shared definitions. Every service template (tender.yaml, mission.yaml, ...) is one call of "haulmesh.service",
so the five services cannot drift apart; what differs between them is in "haulmesh.topology" below.
*/}}

{{- define "haulmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "haulmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on everything the release makes. */}}
{{- define "haulmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "haulmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: haulmesh
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "name" "tender"). */}}
{{- define "haulmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "haulmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
Who is who: each service's gRPC port (the runtime's defaults, services/runtime/_config.py), its extra ports, and
the services that call it (the stub(...) calls in each service's __main__.py and the gateway's transcoding of every
haulmesh.<area>.v1 API, its own webhook API included). The NetworkPolicies admit exactly these callers.
*/}}
{{- define "haulmesh.topology" -}}
tender:
  grpcPort: 50051
  grpcService: haulmesh.tender.v1.TenderService
  callers: [gateway]
mission:
  grpcPort: 50052
  grpcService: haulmesh.mission.v1.MissionService
  callers: [gateway, tender, telemetry, billing]
telemetry:
  grpcPort: 50053
  grpcService: haulmesh.telemetry.v1.TelemetryService
  callers: [gateway, mission, billing]
billing:
  grpcPort: 50054
  grpcService: haulmesh.billing.v1.BillingService
  callers: [gateway, tender, mission]
gateway:
  grpcPort: 50055
  grpcService: haulmesh.gateway.v1.WebhookService
  callers: [gateway]
  httpPort: 8080
  devicePort: 8443
{{- end }}

{{/*
The services the chart runs only when asked (services/runtime OPTIONAL_PORTS): no service calls them, so they are
not among every service's peers above; "calls" are the peers they reach (their HAULMESH_<PEER>_ADDR, their egress
NetworkPolicy, and the peers' ingress policies admit them). The EDI service (edi.enabled) serves no gRPC API of its
own (health and reflection only: its readiness asks for the server, ""); its partners' door is SFTP on sftpPort.
*/}}
{{- define "haulmesh.optionalTopology" -}}
edi:
  grpcPort: 50056
  grpcService: ""
  calls: [tender, mission, billing]
  sftpPort: 2222
{{- end }}

{{/* The optional services that are switched on, e.g. ["edi"] with edi.enabled. */}}
{{- define "haulmesh.enabledOptional" -}}
{{- $on := list }}
{{- if .Values.edi.enabled }}{{ $on = append $on "edi" }}{{ end }}
{{- toJson $on }}
{{- end }}

{{/* The optional services that call one service: (dict "root" $ "name" "tender") -> ["edi"] or []. */}}
{{- define "haulmesh.optionalCallers" -}}
{{- $optional := include "haulmesh.optionalTopology" .root | fromYaml }}
{{- $callers := list }}
{{- range $caller := include "haulmesh.enabledOptional" .root | fromJsonArray }}
{{- if has $.name (index $optional $caller).calls }}{{ $callers = append $callers $caller }}{{ end }}
{{- end }}
{{- toJson $callers }}
{{- end }}

{{/* Where the EDI service keeps its partner folders and (by default) its raw archive: its PersistentVolumeClaim. */}}
{{- define "haulmesh.ediDataDir" -}}
/var/lib/haulmesh-edi
{{- end }}

{{- define "haulmesh.ediClaimName" -}}
{{- default (printf "%s-edi" (include "haulmesh.fullname" .)) .Values.edi.persistence.existingClaim }}
{{- end }}

{{- define "haulmesh.ediPartnersConfigMap" -}}
{{- default (printf "%s-edi-partners" (include "haulmesh.fullname" .)) .Values.edi.existingPartnersConfigMap }}
{{- end }}

{{- define "haulmesh.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "haulmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "haulmesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding REDIS_URL, and its key. */}}
{{- define "haulmesh.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else }}
{{- printf "%s-redis" (include "haulmesh.fullname" .) }}
{{- end }}
{{- end }}

{{- define "haulmesh.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecretKey }}
{{- else }}
{{- "url" }}
{{- end }}
{{- end }}

{{/* The key of a service's own REDIS_URL (its own store user): dict "root" . "name" <service>. */}}
{{- define "haulmesh.redisSecretKeyFor" -}}
{{- $root := .root }}
{{- if and $root.Values.valkey.enabled $root.Values.valkey.acl.enabled }}
{{- printf "url-%s" .name }}
{{- else if and $root.Values.redis.existingSecret $root.Values.redis.perServiceKeys }}
{{- printf "%s-%s" $root.Values.redis.existingSecretKey .name }}
{{- else }}
{{- include "haulmesh.redisSecretKey" $root }}
{{- end }}
{{- end }}

{{/* The Secret with the store's CA (ca.crt) the services verify its TLS certificate with; empty: none. */}}
{{- define "haulmesh.storeTlsSecret" -}}
{{- if .Values.valkey.enabled }}
{{- if .Values.valkey.tls.enabled }}{{ .Values.valkey.tls.secretName }}{{ end }}
{{- else }}
{{- .Values.redis.tlsCaSecret }}
{{- end }}
{{- end }}

{{/* The variable each key of telemetryCaps / gatewayCaps sets (values.yaml documents them; defaults = the code's). */}}
{{- define "haulmesh.capVariables" -}}
telemetry:
  watchPoolConnections: HAULMESH_TELEMETRY_WATCH_POOL_CONNECTIONS
  maxWatchesPerProcess: HAULMESH_TELEMETRY_MAX_WATCHES_PER_PROCESS
  maxWatchesPerTenant: HAULMESH_TELEMETRY_MAX_WATCHES_PER_TENANT
  watchRetryAfterSeconds: HAULMESH_TELEMETRY_WATCH_RETRY_AFTER_SECONDS
  maxInflightFramesPerStream: HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_STREAM
  maxInflightFramesPerProcess: HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS
  maxTrackingFrames: HAULMESH_TELEMETRY_MAX_TRACKING_FRAMES
  maxOutboundMessagesPerStream: HAULMESH_TELEMETRY_MAX_OUTBOUND_MESSAGES_PER_STREAM
  maxCommandAckBytes: HAULMESH_TELEMETRY_MAX_COMMAND_ACK_BYTES
  commandAcksKept: HAULMESH_TELEMETRY_COMMAND_ACKS_KEPT
gateway:
  sseMaxStreamsPerProcess: HAULMESH_SSE_MAX_STREAMS_PER_PROCESS
  sseMaxStreamsPerCarrier: HAULMESH_SSE_MAX_STREAMS_PER_CARRIER
  sseRetryAfterSeconds: HAULMESH_SSE_RETRY_AFTER_SECONDS
  deviceMaxInflightRequests: HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS
{{- end }}

{{/*
A number from values as an environment value. Helm reads every number of values.yaml as a float64, which prints
in exponent form from 1,000,000 on ("1e+06"), and the services read whole numbers with int(): whole numbers are
printed as integers, the others as they are ("2.5").
*/}}
{{- define "haulmesh.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* HAULMESH_STORE_ACK_REPLICAS: the in-chart Valkey's replicas, else what redis.ackReplicas says. */}}
{{- define "haulmesh.ackReplicas" -}}
{{- if .Values.valkey.enabled }}
{{- .Values.valkey.replicas | default 0 | int }}
{{- else }}
{{- .Values.redis.ackReplicas | default 0 | int }}
{{- end }}
{{- end }}

{{/* The TLS Secret of one service: (dict "root" $ "name" "tender"). */}}
{{- define "haulmesh.tlsSecretName" -}}
{{- $svc := index .root.Values.services .name | default dict }}
{{- if eq .name "edi" }}{{ $svc = .root.Values.edi }}{{ end }}
{{- default (printf "%s-%s-tls" (include "haulmesh.fullname" .root) .name) $svc.tlsSecretName }}
{{- end }}

{{/* Pod-level hardening shared by every workload of the chart. */}}
{{- define "haulmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "haulmesh.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
One service: its Deployment and its ClusterIP Service. Called as (dict "root" $ "name" "tender") by the
service's own template. The EDI service (edi.yaml) is one too, with its values under "edi" instead of
"services.<name>", one replica, and its own volumes and variables (the "$edi" branches).
*/}}
{{- define "haulmesh.service" -}}
{{- $root := .root }}
{{- $name := .name }}
{{- $fullname := include "haulmesh.fullname" $root }}
{{- $topology := include "haulmesh.topology" $root | fromYaml }}
{{- $edi := eq $name "edi" }}
{{- $me := index (merge (include "haulmesh.optionalTopology" $root | fromYaml) $topology) $name }}
{{- $svc := index $root.Values.services $name | default dict }}
{{- if $edi }}{{ $svc = $root.Values.edi }}{{ end }}
{{- $autoscaling := index $root.Values.autoscaling $name | default dict }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}-{{ $name }}
  labels:
    {{- include "haulmesh.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  {{- if $edi }}
  {{- /* One EDI process, never two, not even during a rollout (Recreate: the old pod is gone before the new one
  starts). The folder poller takes each partner's in/ files and the SFTP door writes them, both on one
  ReadWriteOnce volume: two pods would race on the same files (a file processed twice, one's 997 sent by each),
  and the volume cannot be attached to two nodes anyway. A partner's SFTP client retries a refused connection;
  nothing is lost while the pod restarts (uploads wait in in/, our documents in out/). */}}
  replicas: 1
  {{- else if not $autoscaling.enabled }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "haulmesh.selectorLabels" . | nindent 6 }}
  strategy:
    {{- if $edi }}
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "haulmesh.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $name }}
        {{- with $svc.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- /* A change of the chart-made Redis Secret rolls the pods (the URL is read at start-up). */}}
        checksum/redis: {{ printf "%s|%s|%v|%v|%v" $root.Values.redis.url $root.Values.redis.existingSecret $root.Values.valkey.enabled $root.Values.valkey.acl.enabled $root.Values.valkey.tls.enabled | sha256sum | trunc 16 }}
        {{- if and $edi $root.Values.edi.partners (not $root.Values.edi.existingPartnersConfigMap) }}
        {{- /* The partners are read at start-up: a changed partners file rolls the pod (`helm upgrade`). */}}
        checksum/edi-partners: {{ $root.Values.edi.partners | sha256sum | trunc 16 }}
        {{- end }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "haulmesh.serviceAccountName" $root }}
      # The services never call the Kubernetes API.
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $svc.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "haulmesh.podSecurityContext" $root | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "haulmesh.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["python", "-m", "services.{{ $name }}"]
          securityContext:
            {{- include "haulmesh.containerSecurityContext" $root | nindent 12 }}
          ports:
            - name: grpc
              containerPort: {{ $me.grpcPort }}
              protocol: TCP
            - name: health
              containerPort: {{ $root.Values.health.port }}
              protocol: TCP
            {{- if $root.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
            {{- if $me.httpPort }}
            - name: http
              containerPort: {{ $me.httpPort }}
              protocol: TCP
            - name: device
              containerPort: {{ $me.devicePort }}
              protocol: TCP
            {{- end }}
            {{- if and $edi $root.Values.edi.sftp.enabled }}
            - name: sftp
              containerPort: {{ $me.sftpPort }}
              protocol: TCP
            {{- end }}
          {{- $credentials := list }}
          {{- if and (eq $name "telemetry") $root.Values.archive.credentialsSecret }}
          {{- $credentials = append $credentials $root.Values.archive.credentialsSecret }}
          {{- end }}
          {{- if and $edi $root.Values.edi.archive.credentialsSecret }}
          {{- $credentials = append $credentials $root.Values.edi.archive.credentialsSecret }}
          {{- end }}
          {{- /* The audit checkpoints' store: every service writes its own chain's checkpoints there (credentials of
          their own, never the archive's: least privilege). */}}
          {{- with $root.Values.auditAnchor.credentialsSecret }}
          {{- if not (has . $credentials) }}
          {{- $credentials = append $credentials . }}
          {{- end }}
          {{- end }}
          {{- with $credentials }}
          envFrom:
            {{- range . }}
            - secretRef:
                name: {{ . }}
            {{- end }}
          {{- end }}
          env:
            - name: HAULMESH_LISTEN_HOST
              value: "0.0.0.0"
            - name: HAULMESH_PORT
              value: {{ $me.grpcPort | quote }}
            - name: HAULMESH_HEALTH_PORT
              value: {{ $root.Values.health.port | quote }}
            - name: HAULMESH_METRICS_PORT
              value: {{ ternary $root.Values.metrics.port 0 $root.Values.metrics.enabled | quote }}
            {{- if $me.httpPort }}
            - name: HAULMESH_HTTP_PORT
              value: {{ $me.httpPort | quote }}
            - name: HAULMESH_GATEWAY_DEVICE_PORT
              value: {{ $me.devicePort | quote }}
            {{- end }}
            - name: HAULMESH_STATE_DIR
              value: /var/lib/haulmesh
            - name: HAULMESH_TLS_CA_FILE
              value: /etc/haulmesh/tls/ca.crt
            - name: HAULMESH_TLS_CERT_FILE
              value: /etc/haulmesh/tls/tls.crt
            - name: HAULMESH_TLS_KEY_FILE
              value: /etc/haulmesh/tls/tls.key
            - name: HAULMESH_AUDIT_SIGNING_KEY_FILE
              value: /etc/haulmesh/audit/audit-signing-key.pem
            {{- with $root.Values.auditAnchor.checkpointUrl }}
            - name: HAULMESH_AUDIT_CHECKPOINT_URL
              value: {{ . | quote }}
            {{- end }}
            - name: HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS
              value: {{ include "haulmesh.number" $root.Values.auditAnchor.intervalSeconds | quote }}
            {{- if eq $name "billing" }}
            {{- /* The evidence key that seals evidence packs: billing only (least privilege). */}}
            - name: HAULMESH_BILLING_EVIDENCE_CERT_FILE
              value: /etc/haulmesh/evidence/tls.crt
            - name: HAULMESH_BILLING_EVIDENCE_KEY_FILE
              value: /etc/haulmesh/evidence/tls.key
            {{- end }}
            {{- if and (eq $name "gateway") $root.Values.enrolment.secretName }}
            {{- /* The CA key that signs trucks' certificates: the gateway only (least privilege). */}}
            - name: HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE
              value: /etc/haulmesh/enrolment/tls.crt
            - name: HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE
              value: /etc/haulmesh/enrolment/tls.key
            - name: HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS
              value: {{ $root.Values.enrolment.vehicleCertTtlSeconds | quote }}
            {{- end }}
            {{- if eq $name "telemetry" }}
            {{- with $root.Values.archive }}
            {{- /* The archive: an S3 bucket with Object Lock in a cluster; empty url: the pod's emptyDir. */}}
            {{- if .url }}
            - name: HAULMESH_ARCHIVE_URL
              value: {{ .url | quote }}
            {{- end }}
            - name: HAULMESH_ARCHIVE_RETENTION_DAYS
              value: {{ include "haulmesh.number" .retentionDays | quote }}
            - name: HAULMESH_ARCHIVE_AFTER_SECONDS
              value: {{ include "haulmesh.number" .afterSeconds | quote }}
            {{- end }}
            {{- end }}
            {{- /* Per-process caps (values telemetryCaps / gatewayCaps), each to its own service only. */}}
            {{- $caps := include "haulmesh.capVariables" . | fromYaml }}
            {{- range $key, $variable := (get $caps $name | default dict) }}
            - name: {{ $variable }}
              value: {{ include "haulmesh.number" (index (get $root.Values (printf "%sCaps" $name)) $key) | quote }}
            {{- end }}
            {{- if $edi }}
            {{- include "haulmesh.ediEnv" (dict "root" $root "me" $me) | trim | nindent 12 }}
            {{- end }}
            {{- /* Short Service names: the names `haulmesh pki` and cert-manager put in the certificates. An optional
            service gets the peers it calls only (its egress reaches no other). */}}
            {{- range $peer, $peerTopology := $topology }}
            {{- if or (not $edi) (has $peer $me.calls) }}
            - name: HAULMESH_{{ upper $peer }}_ADDR
              value: "{{ $fullname }}-{{ $peer }}:{{ $peerTopology.grpcPort }}"
            {{- end }}
            {{- end }}
            - name: HAULMESH_STORE_ACK_REPLICAS
              value: {{ include "haulmesh.ackReplicas" $root | quote }}
            - name: REDIS_URL
              valueFrom:
                secretKeyRef:
                  name: {{ include "haulmesh.redisSecretName" $root }}
                  key: {{ include "haulmesh.redisSecretKeyFor" (dict "root" $root "name" $name) }}
            {{- if eq $name "gateway" }}
            {{- with $root.Values.gatewayAuth }}
            {{- if .jwksUrl }}
            - name: HAULMESH_JWKS_URL
              value: {{ .jwksUrl | quote }}
            {{- else if .jwksConfigMap.name }}
            - name: HAULMESH_JWKS_FILE
              value: /etc/haulmesh/jwks/{{ .jwksConfigMap.key }}
            {{- end }}
            {{- with .issuer }}
            - name: HAULMESH_JWT_ISSUER
              value: {{ . | quote }}
            {{- end }}
            {{- with .audience }}
            - name: HAULMESH_JWT_AUDIENCE
              value: {{ . | quote }}
            {{- end }}
            {{- /* Always rendered, with the code's defaults (values.yaml): the gateway checks them at start-up. */}}
            - name: HAULMESH_JWT_LEEWAY_SECONDS
              value: {{ include "haulmesh.number" .leewaySeconds | quote }}
            - name: HAULMESH_JWKS_REFRESH_SECONDS
              value: {{ include "haulmesh.number" .jwksRefreshSeconds | quote }}
            - name: HAULMESH_JWKS_COOLDOWN_SECONDS
              value: {{ include "haulmesh.number" .jwksCooldownSeconds | quote }}
            - name: HAULMESH_JWKS_MAX_STALE_SECONDS
              value: {{ include "haulmesh.number" .jwksMaxStaleSeconds | quote }}
            - name: HAULMESH_JWKS_FETCH_TIMEOUT_SECONDS
              value: {{ include "haulmesh.number" .jwksFetchTimeoutSeconds | quote }}
            {{- with .issuerCarriers }}
            - name: HAULMESH_JWT_ISSUER_CARRIERS
              value: {{ join "," . | quote }}
            {{- end }}
            {{- if .jwksCaConfigMap.name }}
            - name: HAULMESH_JWKS_CA_FILE
              value: /etc/haulmesh/jwks-ca/{{ .jwksCaConfigMap.key }}
            {{- end }}
            {{- end }}
            {{- with $root.Values.console }}
            {{- if .oidcIssuer }}
            - name: HAULMESH_OIDC_ISSUER
              value: {{ .oidcIssuer | quote }}
            - name: HAULMESH_OIDC_CLIENT_ID
              value: {{ .oidcClientId | quote }}
            - name: HAULMESH_OIDC_SCOPES
              value: {{ .oidcScopes | quote }}
            - name: HAULMESH_OIDC_ROLES_CLAIM
              value: {{ .oidcRolesClaim | quote }}
            - name: HAULMESH_OIDC_CARRIER_CLAIM
              value: {{ .oidcCarrierClaim | quote }}
            {{- with .oidcRedirectUrl }}
            - name: HAULMESH_OIDC_REDIRECT_URL
              value: {{ . | quote }}
            {{- end }}
            {{- if .oidcClientSecret.name }}
            - name: HAULMESH_OIDC_CLIENT_SECRET_FILE
              value: /etc/haulmesh/oidc/{{ .oidcClientSecret.key }}
            {{- end }}
            {{- end }}
            {{- with .tileUrl }}
            - name: HAULMESH_CONSOLE_TILE_URL
              value: {{ . | quote }}
            {{- end }}
            - name: HAULMESH_CONSOLE_SESSION_SECONDS
              value: {{ include "haulmesh.number" .sessionSeconds | quote }}
            {{- end }}
            {{- end }}
            {{- range $key, $value := merge (deepCopy $svc.env) $root.Values.env }}
            - name: {{ $key }}
              value: {{ $value | toString | quote }}
            {{- end }}
            {{- with $svc.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- /* Native gRPC probes: grpc.health.v1 on the plain-text health port (the kubelet has no client certificate). */}}
          startupProbe:
            grpc:
              port: {{ $root.Values.health.port }}
              service: haulmesh.liveness
            periodSeconds: {{ $root.Values.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.startup.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.startup.failureThreshold }}
          livenessProbe:
            grpc:
              port: {{ $root.Values.health.port }}
              service: haulmesh.liveness
            initialDelaySeconds: {{ $root.Values.probes.liveness.initialDelaySeconds }}
            periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $root.Values.health.port }}
              service: {{ $me.grpcService | quote }}
            initialDelaySeconds: {{ $root.Values.probes.readiness.initialDelaySeconds }}
            periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          volumeMounts:
            - name: tls
              mountPath: /etc/haulmesh/tls
              readOnly: true
            - name: state
              mountPath: /var/lib/haulmesh
            - name: tmp
              mountPath: /tmp
            - name: audit
              mountPath: /etc/haulmesh/audit
              readOnly: true
            {{- if include "haulmesh.storeTlsSecret" $root }}
            - name: store-tls
              mountPath: /etc/haulmesh/store-tls
              readOnly: true
            {{- end }}
            {{- if eq $name "billing" }}
            - name: evidence
              mountPath: /etc/haulmesh/evidence
              readOnly: true
            {{- end }}
            {{- if and (eq $name "gateway") (not $root.Values.gatewayAuth.jwksUrl) $root.Values.gatewayAuth.jwksConfigMap.name }}
            - name: jwks
              mountPath: /etc/haulmesh/jwks
              readOnly: true
            {{- end }}
            {{- if and (eq $name "gateway") $root.Values.gatewayAuth.jwksCaConfigMap.name }}
            - name: jwks-ca
              mountPath: /etc/haulmesh/jwks-ca
              readOnly: true
            {{- end }}
            {{- if and (eq $name "gateway") $root.Values.enrolment.secretName }}
            - name: enrolment
              mountPath: /etc/haulmesh/enrolment
              readOnly: true
            {{- end }}
            {{- if and (eq $name "gateway") $root.Values.console.oidcIssuer $root.Values.console.oidcClientSecret.name }}
            - name: oidc-client
              mountPath: /etc/haulmesh/oidc
              readOnly: true
            {{- end }}
            {{- if $edi }}
            - name: edi-data
              mountPath: {{ include "haulmesh.ediDataDir" $root }}
            {{- if or $root.Values.edi.partners $root.Values.edi.existingPartnersConfigMap }}
            - name: edi-partners
              mountPath: /etc/haulmesh/edi
              readOnly: true
            {{- end }}
            {{- if $root.Values.edi.sftp.enabled }}
            - name: edi-sftp-host-key
              mountPath: /etc/haulmesh/edi-sftp
              readOnly: true
            {{- end }}
            {{- end }}
      volumes:
        {{- /* A whole-Secret mount (no subPath): rotated certificates appear in place and are re-read. */}}
        - name: tls
          secret:
            secretName: {{ include "haulmesh.tlsSecretName" . }}
            defaultMode: 0440
        - name: state
          emptyDir:
            sizeLimit: 256Mi
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 64Mi
        {{- with include "haulmesh.storeTlsSecret" $root }}
        - name: store-tls
          secret:
            secretName: {{ . }}
            items:
              - key: ca.crt
                path: ca.crt
        {{- end }}
        {{- /* The audit checkpoint key (not optional: a service that cannot anchor its chain does not start). */}}
        - name: audit
          secret:
            secretName: {{ $root.Values.auditAnchor.secretName | default (printf "%s-audit-signing-key" $fullname) }}
            defaultMode: 0440
        {{- if eq $name "billing" }}
        {{- /* Optional: without it billing runs and an export answers EVIDENCE_KEY_UNAVAILABLE. */}}
        - name: evidence
          secret:
            secretName: {{ $root.Values.evidence.secretName | default (printf "%s-evidence-key" $fullname) }}
            defaultMode: 0440
            optional: true
        {{- end }}
        {{- if and (eq $name "gateway") (not $root.Values.gatewayAuth.jwksUrl) $root.Values.gatewayAuth.jwksConfigMap.name }}
        - name: jwks
          configMap:
            name: {{ $root.Values.gatewayAuth.jwksConfigMap.name }}
        {{- end }}
        {{- if and (eq $name "gateway") $root.Values.gatewayAuth.jwksCaConfigMap.name }}
        - name: jwks-ca
          configMap:
            name: {{ $root.Values.gatewayAuth.jwksCaConfigMap.name }}
        {{- end }}
        {{- if and (eq $name "gateway") $root.Values.enrolment.secretName }}
        {{- /* Not optional: a gateway told to enrol without its key must not start (it would answer 503). */}}
        - name: enrolment
          secret:
            secretName: {{ $root.Values.enrolment.secretName }}
            defaultMode: 0440
        {{- end }}
        {{- if and (eq $name "gateway") $root.Values.console.oidcIssuer $root.Values.console.oidcClientSecret.name }}
        - name: oidc-client
          secret:
            secretName: {{ $root.Values.console.oidcClientSecret.name }}
            defaultMode: 0440
        {{- end }}
        {{- if $edi }}
        {{- /* The partner folders (in/, out/, archive/, failed/) and the local raw archive: kept across restarts. */}}
        - name: edi-data
          persistentVolumeClaim:
            claimName: {{ include "haulmesh.ediClaimName" $root }}
        {{- if or $root.Values.edi.partners $root.Values.edi.existingPartnersConfigMap }}
        - name: edi-partners
          configMap:
            name: {{ include "haulmesh.ediPartnersConfigMap" $root }}
            items:
              - key: partners.toml
                path: partners.toml
        {{- end }}
        {{- if $root.Values.edi.sftp.enabled }}
        {{- /* The SFTP host key (not optional, never generated by the chart: the door refuses to start without
        it, and partners pin its fingerprint). 0400: the kubelet makes it group-readable for fsGroup only, never
        world-readable, which the door refuses. */}}
        - name: edi-sftp-host-key
          secret:
            secretName: {{ $root.Values.edi.sftp.hostKeySecret }}
            defaultMode: 0400
            items:
              - key: ssh_host_key
                path: ssh_host_key
        {{- end }}
        {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}-{{ $name }}
  labels:
    {{- include "haulmesh.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  type: ClusterIP
  selector:
    {{- include "haulmesh.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $me.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- if $root.Values.metrics.enabled }}
    - name: metrics
      port: {{ $root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
    {{- if $me.httpPort }}
    - name: http
      port: {{ $me.httpPort }}
      targetPort: http
      protocol: TCP
      appProtocol: http
    - name: device
      port: {{ $me.devicePort }}
      targetPort: device
      protocol: TCP
      appProtocol: https
    {{- end }}
{{- end }}

{{/*
The EDI service's own variables (services/edi/config.py; the SFTP door's, services/edi/sftp.py, as the service
reads them): (dict "root" $ "me" <its topology>). Paths are the pod's mounts ("haulmesh.service").
*/}}
{{- define "haulmesh.ediEnv" -}}
{{- $edi := .root.Values.edi }}
{{- $data := include "haulmesh.ediDataDir" .root }}
{{- if or $edi.partners $edi.existingPartnersConfigMap }}
- name: HAULMESH_EDI_PARTNERS_FILE
  value: /etc/haulmesh/edi/partners.toml
{{- end }}
- name: HAULMESH_EDI_ROOT
  value: {{ printf "%s/partners" $data | quote }}
- name: HAULMESH_EDI_ARCHIVE_URL
  value: {{ default (printf "%s/archive" $data) $edi.archive.url | quote }}
- name: HAULMESH_EDI_POLL_SECONDS
  value: {{ include "haulmesh.number" $edi.pollSeconds | quote }}
- name: HAULMESH_EDI_FILES_PER_POLL
  value: {{ include "haulmesh.number" $edi.filesPerPoll | quote }}
- name: HAULMESH_EDI_DUPLICATE_DAYS
  value: {{ include "haulmesh.number" $edi.duplicateDays | quote }}
- name: HAULMESH_EDI_SFTP_PORT
  value: {{ ternary .me.sftpPort 0 $edi.sftp.enabled | quote }}
{{- if $edi.sftp.enabled }}
- name: HAULMESH_EDI_SFTP_BIND_HOST
  value: "0.0.0.0"
- name: HAULMESH_EDI_SFTP_HOST_KEY_FILE
  value: /etc/haulmesh/edi-sftp/ssh_host_key
- name: HAULMESH_EDI_SFTP_MAX_CONNECTIONS
  value: {{ include "haulmesh.number" $edi.sftp.maxConnections | quote }}
- name: HAULMESH_EDI_SFTP_MAX_FILE_BYTES
  value: {{ include "haulmesh.number" $edi.sftp.maxFileBytes | quote }}
{{- end }}
{{- end }}
