#!/usr/bin/env bash
# Create or refresh .venv, the project virtualenv, from the lock (requirements.txt) and install Forgeflow
# into it (editable, so .venv/bin/forgeflow runs this checkout).
#
#   scripts/setup.sh           # idempotent: returns at once when .venv matches the lock and pyproject
#   FORCE=1 scripts/setup.sh   # reinstall
#
# torch is the CPU build (2.13.0+cpu): from /opt/wheels when it exists, else from the PyTorch CPU index.
# Nothing here may pull a CUDA torch into this environment.
#
# DeepSpeed (requirements-deepspeed.txt) is a second step after the lock: it builds from its sdist against
# the torch installed by the first (--no-build-isolation), with DS_BUILD_OPS=0 (no C++ ops compiled; the
# engine JIT-builds any it needs into $FORGEFLOW_HOME/torch_extensions).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.forgeflow-lock.sha256"
cd "$ROOT"

want="$(cat requirements.txt requirements-deepspeed.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ "${FORCE:-0}" != "1" && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "setup: .venv is up to date (${want:0:12})"
    exit 0
fi

if ! command -v uv >/dev/null 2>&1; then
    echo "setup: installing uv (the installer used for the locks) ..."
    python3 -m pip install --quiet uv || { echo "setup: ERROR: could not install uv with pip" >&2; exit 1; }
fi
UV="$(command -v uv || echo "$(python3 -m site --user-base)/bin/uv")"

if [[ -d /opt/wheels ]]; then
    wheel_args=(--find-links /opt/wheels)
else
    wheel_args=(--extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
fi

[[ -x "$VENV/bin/python" ]] || "$UV" venv "$VENV" --python 3.11 --quiet
echo "setup: installing the lock into .venv ..."
"$UV" pip sync --python "$VENV/bin/python" requirements.txt "${wheel_args[@]}" --index-strategy unsafe-best-match
echo "setup: installing DeepSpeed (no compiled ops) ..."
DS_BUILD_OPS=0 "$UV" pip install --python "$VENV/bin/python" --no-build-isolation --no-deps \
    -r requirements-deepspeed.txt --quiet
"$UV" pip install --python "$VENV/bin/python" --no-deps -e . --quiet
want_ds="$(sed -n 's/^deepspeed==//p' requirements-deepspeed.txt)"
have_ds="$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('deepspeed'))" 2>/dev/null || true)"
if [[ "$have_ds" != "$want_ds" ]]; then
    echo "setup: ERROR: DeepSpeed $want_ds expected in .venv, found ${have_ds:-none}" >&2
    exit 1
fi
if "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)"; then
    echo "$want" > "$STAMP"
    echo "setup: .venv ready ($("$VENV/bin/python" --version), torch CPU build, DeepSpeed $have_ds)"
else
    echo "setup: ERROR: a CUDA build of torch ended up in .venv; check requirements.txt" >&2
    exit 1
fi
