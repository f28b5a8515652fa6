#!/usr/bin/env bash
# Fetches the CRDs of the chart's optional objects (prometheus-operator's ServiceMonitor and PrometheusRule,
# cert-manager's Certificate and Issuer) and External Secrets' ExternalSecret (used in examples/gitops/) from
# their Go modules, through the Go module proxy and its checksum database, into
# ${XDG_CACHE_HOME:-~/.cache}/cdi-operator/third-party-crds/ and prints that directory as the last line. The e2e
# tests install them before the server-side dry-run of the chart with every option on, and before Flux applies
# examples/gitops/ (tests/e2e/test_gitops_flux.py).
set -euo pipefail

prometheus_operator=v0.85.0
cert_manager=v1.19.1
external_secrets=v1.3.2
out="${XDG_CACHE_HOME:-$HOME/.cache}/cdi-operator/third-party-crds/po-$prometheus_operator-cm-$cert_manager-eso-$external_secrets"

if [[ ! -f "$out/.complete" ]]; then
  mkdir -p "$out"
  dir_of() { go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }
  po=$(dir_of github.com/prometheus-operator/prometheus-operator "$prometheus_operator")
  cm=$(dir_of github.com/cert-manager/cert-manager "$cert_manager")
  eso=$(dir_of github.com/external-secrets/external-secrets "$external_secrets")
  for crd in servicemonitors prometheusrules; do
    cp "$po/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$out/"
  done
  for crd in certificates issuers; do
    cp "$cm/deploy/crds/cert-manager.io_$crd.yaml" "$out/"
  done
  cp "$eso/config/crds/bases/external-secrets.io_externalsecrets.yaml" "$out/"
  chmod 0644 "$out"/*.yaml
  touch "$out/.complete"
fi
echo "$out"
