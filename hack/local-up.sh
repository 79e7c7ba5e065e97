#!/usr/bin/env bash
# Brings up the local control plane (etcd, kube-apiserver, a kwok node) on
# loopback, prints `export KUBECONFIG=...` for an admin, and tears it all
# down on Ctrl-C or SIGTERM. Extra flags go to hack/local-up (e.g. --console).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/hack/build-tools.sh"
cd "$ROOT"
go build -o _output/bin/local-up ./hack/local-up
# exec, so the signal reaches local-up, which stops the plane.
exec _output/bin/local-up "$@"
