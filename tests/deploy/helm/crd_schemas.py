"""Strict JSON schemas for the three custom resources the chart renders, which kubernetes-validate (built-in
kinds only) has no schema for: cert-manager's Certificate, prometheus-operator's ServiceMonitor and
PrometheusRule.

They are the subset of the upstream CRDs' ``openAPIV3Schema`` (cert-manager.io/v1, monitoring.coreos.com/v1)
that a chart would plausibly use, with the same field names, types and enums, and unknown fields refused
(a misspelt field is silently dropped by the API server's pruning, so it must fail here). Fields outside
the subset fail too: extend the subset from the upstream CRD when the chart starts using one.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_LABELS = {"type": "object", "additionalProperties": _STR}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": _STR, "labels": _LABELS, "annotations": _LABELS, "namespace": _STR}}

_LABEL_SELECTOR = _object({
    "matchLabels": _LABELS,
    "matchExpressions": {"type": "array", "items": _object({
        "key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]}, "values": _STRS,
    }, ("key", "operator"))},
})

_KEY_USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
               "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
               "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
               "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]

CERTIFICATE = _object({
    "apiVersion": {"const": "cert-manager.io/v1"},
    "kind": {"const": "Certificate"},
    "metadata": _METADATA,
    "spec": _object({
        "secretName": _STR,
        "commonName": _STR,
        "dnsNames": _STRS,
        "uris": _STRS,
        "ipAddresses": _STRS,
        "emailAddresses": _STRS,
        "duration": _GO_DURATION,
        "renewBefore": _GO_DURATION,
        "isCA": {"type": "boolean"},
        "usages": {"type": "array", "items": {"enum": _KEY_USAGES}},
        "privateKey": _object({
            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
            "encoding": {"enum": ["PKCS1", "PKCS8"]},
            "rotationPolicy": {"enum": ["Never", "Always"]},
            "size": {"type": "integer"},
        }),
        "issuerRef": _object({"name": _STR, "kind": _STR, "group": _STR}, ("name",)),
        "secretTemplate": _object({"annotations": _LABELS, "labels": _LABELS}),
    }, ("issuerRef", "secretName")),
}, ("apiVersion", "kind", "metadata", "spec"))

_RELABEL = _object({
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
                        "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                        "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
    "modulus": {"type": "integer"},
    "regex": _STR,
    "replacement": _STR,
    "separator": _STR,
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "targetLabel": _STR,
})

SERVICE_MONITOR = _object({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "ServiceMonitor"},
    "metadata": _METADATA,
    "spec": _object({
        "selector": _LABEL_SELECTOR,
        "namespaceSelector": _object({"any": {"type": "boolean"}, "matchNames": _STRS}),
        "jobLabel": _STR,
        "targetLabels": _STRS,
        "podTargetLabels": _STRS,
        "endpoints": {"type": "array", "items": _object({
            "port": _STR,
            "targetPort": {"type": ["integer", "string"]},
            "path": _STR,
            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
            "interval": _DURATION,
            "scrapeTimeout": _DURATION,
            "honorLabels": {"type": "boolean"},
            "relabelings": {"type": "array", "items": _RELABEL},
            "metricRelabelings": {"type": "array", "items": _RELABEL},
        })},
    }, ("selector",)),
}, ("apiVersion", "kind", "metadata", "spec"))

PROMETHEUS_RULE = _object({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "PrometheusRule"},
    "metadata": _METADATA,
    "spec": _object({
        "groups": {"type": "array", "items": _object({
            "name": {"type": "string", "minLength": 1},
            "interval": _DURATION,
            "limit": {"type": "integer"},
            "labels": _LABELS,
            "rules": {"type": "array", "items": {
                **_object({
                    "alert": _STR,
                    "record": _STR,
                    "expr": {"type": ["integer", "string"]},
                    "for": _DURATION,
                    "keep_firing_for": _DURATION,
                    "labels": _LABELS,
                    "annotations": _LABELS,
                }, ("expr",)),
                # A rule is an alert or a recording rule, never both.
                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
            }},
        }, ("name", "rules"))},
    }),
}, ("apiVersion", "kind", "metadata", "spec"))

#: (apiVersion, kind) -> schema
CUSTOM_RESOURCES: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}
