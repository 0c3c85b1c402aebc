{{/* The chart installs into kpo-system only: the admission policy names the agents' ServiceAccounts there. */}}
{{- define "kpo.namespace" -}}
{{- if ne .Release.Namespace "kpo-system" -}}
{{- fail (printf "kpo installs into the namespace kpo-system only (got %q): helm install kpo charts/kpo -n kpo-system" .Release.Namespace) -}}
{{- end -}}
kpo-system
{{- end -}}

{{/* The image the operator runs and hands to the agents: by digest when one is given. */}}
{{- define "kpo.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}
