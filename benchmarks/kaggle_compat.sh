#!/usr/bin/env bash
# The kit's tests on other library versions than requirements.txt pins: Kaggle's image, or the oldest
# versions the kit supports (README: "Library versions"). Not part of .ci/run: each environment is a
# few GB of wheels and a quarter of an hour of tests on two cores.
#
#   bash benchmarks/kaggle_compat.sh kaggle [VENV_DIR]   # requirements-kaggle.txt on Python 3.12
#   bash benchmarks/kaggle_compat.sh oldest [VENV_DIR]   # requirements-oldest.txt on Python 3.10
#
# It builds (or reuses) a venv in VENV_DIR (default: ~/.cache/kit-compat/ENV, outside the checkout),
# installs the pinned set and the test tools, prints the versions it got, then runs the fast tests,
# the kernel tests (the built training and inference notebooks in the Kaggle-like sandbox, the kaggle
# client's check of every kernel folder) and a one-epoch train + CPU inference of the flow variant.
# KIT_COMPAT_PYTHON names the interpreter to build the venv with; KIT_COMPAT_DATA the competition
# slice (default ../shared/sartorius). Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash benchmarks/kaggle_compat.sh kaggle|oldest [VENV_DIR]"
which="${1:?$usage}"
case "$which" in
    kaggle) python_version=3.12 ;;  # Kaggle's image is the Colab runtime's Python 3.12
    oldest) python_version=3.10 ;;  # kit.kaggle.compat.MINIMUM_PYTHON
    *) echo "kaggle_compat.sh: error: unknown environment '$which'; $usage" >&2; exit 2 ;;
esac
requirements="requirements-$which.txt"
venv="${2:-${XDG_CACHE_HOME:-$HOME/.cache}/kit-compat/$which}"
data="${KIT_COMPAT_DATA:-../shared/sartorius}"

find_python() {  # python$1 from KIT_COMPAT_PYTHON, pyenv's newest patch release, or PATH
    if [[ -n "${KIT_COMPAT_PYTHON:-}" ]]; then echo "$KIT_COMPAT_PYTHON"; return; fi
    local root candidate
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    candidate="$(ls -d "$root"/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$candidate" ]]; then echo "$candidate"; return; fi
    command -v "python$1" || { echo "kaggle_compat.sh: error: no Python $1 found; set KIT_COMPAT_PYTHON" >&2; exit 2; }
}

if [[ ! -f "$data/train.csv" ]]; then
    echo "kaggle_compat.sh: error: no competition slice at $data (train.csv); set KIT_COMPAT_DATA" >&2
    exit 2
fi
if [[ ! -x "$venv/bin/python" ]]; then
    python="$(find_python "$python_version")"
    echo "== creating $venv with $python"
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"
echo "== installing $requirements and the test tools into $venv"
# The test tools as requirements.txt pins them, without its torch/numpy/... lines.
tools="$(grep -E '^(kaggle|six|nbformat|nbclient|ipykernel|pytest)\b' requirements.txt)"
no_client=()  # the kernel tests that need the kaggle client
no_client_files=()  # the test files that do (kit.push runs the client)
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    # The kaggle client pushes kernels from the user's machine and never runs on Kaggle; its release
    # pinned in requirements.txt needs Python 3.11, so on 3.10 its two push tests are left out.
    echo "== $("$py" -V): no kaggle client here (kaggle 2.2.5 needs Python >= 3.11); its push tests are left out"
    # python-slugify, the client's dependency, stays: a test holds the kernel slugs to its rule.
    tools="$(grep -vE '^kaggle\b' <<<"$tools") python-slugify"
    no_client=(--deselect tests/test_build_kernel.py::test_the_kaggle_client_accepts_every_built_folder
               --deselect tests/test_build_kernel.py::test_only_the_t4x2_shape_is_offered_and_the_retired_p100_is_refused_with_its_reason)
    no_client_files=(--ignore=tests/test_push.py)
fi
# shellcheck disable=SC2086
"$py" -m pip install -q -r "$requirements" $tools
"$py" -m pip check || true  # a conflict among the pins is worth seeing, not a reason to stop
"$py" -c "from kit.kaggle import compat; compat.check_environment()"

export CI="${CI:-true}"  # a missing slice fails the real-data tests instead of skipping them
status=0
run() { echo "== $*"; "$@" || { echo "== FAILED: $*"; status=1; }; }
kernel_tests=(tests/test_build_kernel.py tests/test_kernel_sandbox.py)
run "$py" -m pytest -q -p no:cacheprovider -m "not slow" tests "${kernel_tests[@]/#/--ignore=}" "${no_client_files[@]}"
run "$py" -m pytest -q -p no:cacheprovider "${kernel_tests[@]}" "${no_client[@]}"
smoke="$(mktemp -d)"
trap 'rm -rf "$smoke"' EXIT
run "$py" -m kit.train --variant hot-flow-unet --data "$data" --out "$smoke" --epochs 1 --max-images 4 \
    --crop 64x64 --device cpu
run "$py" -m kit.infer --data "$data" --weights "$smoke/hot-flow-unet.pt" --out "$smoke/submission.csv" --device cpu
echo "== $which ($requirements): $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit $status
