#!/usr/bin/env bash
# Regenerates every generated file of the consoles.kubecube.io API: deepcopy,
# conversion and defaulting code next to the types, the OpenAPI definitions and
# the typed clientset under pkg/generated. Generated files are only ever
# written by this script, so that hack/verify-codegen.sh can tell a stale tree
# from a hand edit.
#
# Environment:
#   CODEGEN_BIN                  where the generators are installed
#                                (default: _output/codegen-bin, git-ignored)
#   UPDATE_API_KNOWN_VIOLATIONS  "true" rewrites api/api-rules/violation_exceptions.list
#                                instead of failing on a new OpenAPI rule violation
#   KUBE_VERBOSE                 generator log level
set -o errexit
set -o nounset
set -o pipefail

SCRIPT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
THIS_PKG=github.com/kubecube-io/console-apiserver
BOILERPLATE="${SCRIPT_ROOT}/hack/boilerplate.go.txt"
REPORT="${SCRIPT_ROOT}/api/api-rules/violation_exceptions.list"

# kube_codegen.sh `go install`s the generators into $(go env GOBIN); keep them
# out of ~/go/bin so that they cannot shadow, or be shadowed by, another
# project's generators of a different release.
GOBIN=${CODEGEN_BIN:-"${SCRIPT_ROOT}/_output/codegen-bin"}
mkdir -p "${GOBIN}"
GOBIN=$(cd "${GOBIN}" && pwd -P)
export GOBIN

# The generators come from the code-generator release go.mod pins, so the
# generated code matches the k8s.io libraries it is compiled against.
cd "${SCRIPT_ROOT}"
go mod download k8s.io/code-generator
CODEGEN_PKG=$(go list -m -f '{{.Dir}}' k8s.io/code-generator)

# shellcheck source=/dev/null
source "${CODEGEN_PKG}/kube_codegen.sh"

kube::codegen::gen_helpers \
    --boilerplate "${BOILERPLATE}" \
    "${SCRIPT_ROOT}/pkg/apis"

update_report=()
if [[ "${UPDATE_API_KNOWN_VIOLATIONS:-}" == "true" ]]; then
    update_report=(--update-report)
fi

# The generators only delete files they recognise as their own before writing,
# so a file left behind by a removed type or a renamed generator would linger.
# pkg/generated/{openapi,clientset} hold generated code only: start them empty,
# and drop the model-name files openapi-gen writes next to the types.
rm -rf "${SCRIPT_ROOT}/pkg/generated/openapi"
find "${SCRIPT_ROOT}/pkg/apis" -name zz_generated.model_name.go -delete

# gen_openapi always adds the apimachinery meta/v1, runtime, version and
# resource packages, which the server's OpenAPI needs besides our own types.
# The model-name file gives each API type an OpenAPIModelName method, which
# both the generated definitions and the server's definition namer key on.
kube::codegen::gen_openapi \
    --output-dir "${SCRIPT_ROOT}/pkg/generated/openapi" \
    --output-pkg "${THIS_PKG}/pkg/generated/openapi" \
    --report-filename "${REPORT}" \
    "${update_report[@]:+"${update_report[@]}"}" \
    --output-model-name-file zz_generated.model_name.go \
    --boilerplate "${BOILERPLATE}" \
    "${SCRIPT_ROOT}/pkg/apis"

# Recreated at once because gen_client greps it and complains when it is missing.
rm -rf "${SCRIPT_ROOT}/pkg/generated/clientset"
mkdir -p "${SCRIPT_ROOT}/pkg/generated/clientset"

# No --with-watch: nothing in this group can be listed or watched, so listers
# and informers would be dead code.
kube::codegen::gen_client \
    --output-dir "${SCRIPT_ROOT}/pkg/generated" \
    --output-pkg "${THIS_PKG}/pkg/generated" \
    --boilerplate "${BOILERPLATE}" \
    "${SCRIPT_ROOT}/pkg/apis"
