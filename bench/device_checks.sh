#!/usr/bin/env bash
# The CUDA checks, in one short run on a GPU machine (the `device` tool's, or any): the gpu-marked tests
# (bf16/fp16 against fp32, fp16's loss scaler, a causal-LM distill step) and bench/device.py (CPU vs CUDA).
# Outputs go to $OUT (default ./device-out). A machine without the project's packages gets them from
# .whl/ (wheels) and MiniLM-L6 from KDCLI_MINILM_DIR (a save_pretrained folder).
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu-tests.log"
python3 -m bench.device --steps 30 2>&1 | tee "$OUT/device.json"
