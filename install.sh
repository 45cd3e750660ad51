#!/usr/bin/env bash
# Create .venv and install danceopd. On machines without an NVIDIA GPU the CPU torch wheel is pinned first,
# so nothing ever pulls a multi-GB CUDA build. Users with a GPU and their own torch: DANCEOPD_KEEP_TORCH=1.
#   bash install.sh          # runtime
#   bash install.sh dev      # + test tools (selenium), the demo (gradio), diffusers backends (diffusers==0.42.1,
#                            #   transformers==5.24.0), pyarrow
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${DANCEOPD_KEEP_TORCH:-0}" != "1" ] && ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch>=2.1"
  else
    # A local CPU wheel (pip find-links, as on the project's machines) is used as is; elsewhere the CPU index.
    if ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
      .venv/bin/python -m pip install -q "torch==2.13.0"
    else
      .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
if [ "$extras" = "dev" ]; then
  # the diffusers backends' tests run in the default tier: the tested diffusers / transformers pair is pinned
  .venv/bin/python -m pip install -q -e ".[dev,metrics,diffusers,data,demo]" "diffusers==0.42.1" "transformers==5.24.0"
else
  .venv/bin/python -m pip install -q -e ".[metrics]"
fi
echo "danceopd installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
