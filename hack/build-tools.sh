#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver, kubectl, kwok)
# from the pinned Go modules under hack/tools into _output/tools/bin.
# A binary is rebuilt only when its tool module's go.mod/go.sum or this script
# change, so a warm run costs a few hash checks. The Go build cache makes a
# rebuild after `git clean` a relink, not a compile.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/hack/tools"
OUT="${CONSOLE_TOOLS_DIR:-$ROOT/_output/tools}"
BIN="$OUT/bin"
mkdir -p "$BIN" "$OUT/stamps"

# module_version MODULE_DIR MODULE_PATH prints the version the tool module pins.
module_version() {
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

# stamp_of MODULE_DIR is what a cached binary must match to be reused.
stamp_of() {
  cat "$1/go.mod" "$1/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16
}

# build NAME MODULE_DIR PACKAGE [LDFLAGS]
build() {
  local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
  local want; want=$(stamp_of "$dir")
  if [[ -x "$BIN/$name" && "$(cat "$OUT/stamps/$name" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  echo ">> building $name ($pkg)" >&2
  local start=$SECONDS
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/$name.tmp" "$pkg")
  mv "$BIN/$name.tmp" "$BIN/$name"
  echo "$want" > "$OUT/stamps/$name"
  echo ">> built $name in $((SECONDS - start))s" >&2
}

KUBE_VERSION=$(module_version "$TOOLS/kube" k8s.io/kubernetes)

# kubectl refuses to parse a server version without these.
kube_ldflags() {
  local minor; minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  local date=2026-01-01T00:00:00Z flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$flags"
}

want=${*:-etcd kube-apiserver kubectl kwok}
for tool in $want; do
  case $tool in
    etcd) build etcd "$TOOLS/etcd" . ;;
    kube-apiserver) build kube-apiserver "$TOOLS/kube" k8s.io/kubernetes/cmd/kube-apiserver "$(kube_ldflags)" ;;
    kubectl) build kubectl "$TOOLS/kube" k8s.io/kubernetes/cmd/kubectl "$(kube_ldflags)" ;;
    kwok)
      build kwok "$TOOLS/kwok" sigs.k8s.io/kwok/cmd/kwok
      # kwok will not start without Stages; ship the "fast" ones its module carries.
      src=$(cd "$TOOLS/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
      rm -rf "$OUT/kwok-stages" && mkdir -p "$OUT/kwok-stages"
      for s in node/fast pod/fast; do
        for f in "$src/kustomize/stage/$s"/*.yaml; do
          case $(basename "$f") in kustomization.yaml) continue ;; esac
          cp "$f" "$OUT/kwok-stages/${s%%/*}-$(basename "$f")"
        done
      done
      chmod -R u+w "$OUT/kwok-stages"
      ;;
    *) echo "unknown tool $tool" >&2; exit 1 ;;
  esac
done
