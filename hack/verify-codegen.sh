#!/usr/bin/env bash
# Fails when a generated file differs from what hack/update-codegen.sh would
# write: stale after a change to the API types, edited by hand, or left over
# from a type that no longer exists.
#
# It regenerates into a temporary copy of the tree and compares, rather than
# regenerating in place and asking git, so that it works whether or not the
# generated files are committed and never touches the working tree.
set -o errexit
set -o nounset
set -o pipefail

SCRIPT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

# Everything update-codegen.sh writes lives under these paths.
GENERATED_PATHS=(pkg/apis pkg/generated api/api-rules)

TMP=$(mktemp -d -t verify-codegen.XXXXXX)
trap 'rm -rf "${TMP}"' EXIT

# Only what the generators read, so that the copy stays small however big the
# rest of the checkout (web assets, tool builds) grows.
mkdir -p "${TMP}/repo"
for p in go.mod go.sum hack pkg api; do
    if [[ -e "${SCRIPT_ROOT}/${p}" ]]; then
        cp -a "${SCRIPT_ROOT}/${p}" "${TMP}/repo/${p}"
    fi
done

# Reuse the checkout's generator binaries: installing them afresh into the
# copy would cost a link of each generator on every run.
if ! CODEGEN_BIN="${CODEGEN_BIN:-"${SCRIPT_ROOT}/_output/codegen-bin"}" \
    "${TMP}/repo/hack/update-codegen.sh" >"${TMP}/update-codegen.log" 2>&1; then
    cat "${TMP}/update-codegen.log" >&2
    echo "verify-codegen: hack/update-codegen.sh failed on a copy of the tree (output above)" >&2
    exit 1
fi

stale=()
for p in "${GENERATED_PATHS[@]}"; do
    if [[ ! -e "${SCRIPT_ROOT}/${p}" && ! -e "${TMP}/repo/${p}" ]]; then
        continue
    fi
    # diff -rq names both changed files and files only on one side.
    while IFS= read -r line; do
        stale+=("${line}")
    done < <(diff -rq "${SCRIPT_ROOT}/${p}" "${TMP}/repo/${p}" 2>&1 |
        sed -e "s|${TMP}/repo/|(regenerated) |g" -e "s|${SCRIPT_ROOT}/||g" || true)
done

if (( ${#stale[@]} > 0 )); then
    {
        echo "verify-codegen: generated files are out of date:"
        printf '  %s\n' "${stale[@]}"
        echo "Run hack/update-codegen.sh and commit the result; do not edit generated files by hand."
    } >&2
    exit 1
fi
echo "verify-codegen: generated files are up to date."
