#!/usr/bin/env bash
# Device check for the GPU path (issue 14), for a bare GPU machine with torch, triton, numpy, Pillow,
# safetensors and pytest: no install, no network, no C extension (the CPU engine runs its float path).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh        # from the repository root
#
# 1. the CUDA tests (pytest -x, without the service fixtures of tests/conftest.py);
# 2. the GPU benchmark table, also written to $OUT/gpu_bench.txt;
# 3. the Triton interpreter tests (CPU), if time is left.
# Everything goes to $OUT/gpu_check.log. The whole run stays under 90 s: each step has a timeout and
# none runs past GPU_CHECK_BUDGET (default 85 s) counted from the start.
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU at a tenth of the benchmark size (a dry run).
# GPU_CHECK_PROFILE=1 adds, after the benchmark, where one fused denoise forward spends its device
# time ($OUT/gpu_profile.txt), within the same budget.
set -u
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
export PYTHONPATH=.
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-85}
LOG="$OUT/gpu_check.log"
SCALE=1.0
[ "$DEVICE" = cpu ] && SCALE=0.1
start=$(date +%s)

step() {  # step NAME SECONDS CMD...: run with a timeout (never past the budget), log how it ended
    local name=$1 limit=$2 t0 left
    shift 2
    t0=$(date +%s)
    left=$(( BUDGET - (t0 - start) - 3 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 3 ]; then
        echo "== $name: skipped, no time left"
        return 0
    fi
    echo "== $name (limit ${limit}s)"
    timeout -k 2 "$limit" "$@"
    echo "== $name: exit $? after $(( $(date +%s) - t0 ))s (124: timed out)"
}

ENVIRONMENT='
import sys, torch
from models import kernels
from models.kernels import fused
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
print("triton:", __import__("triton").__version__ if fused.available() else fused.unavailable_reason())
print("C extension:", kernels.available() or kernels.unavailable_reason())'


{
    echo "== gpu_check $(date -u +%FT%TZ) on $(hostname), device $DEVICE, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    step "environment" 15 "$PY" -c "$ENVIRONMENT"
    # the most important first: each later step gets what is left of the budget (measured on an H200:
    # environment 5 s, the CUDA tests 46+ s, the benchmark 22 s, the interpreter tests 7 s)
    step "CUDA tests" 50 "$PY" -m pytest -x -v --durations=8 --noconftest -p no:cacheprovider \
        tests/test_precision.py tests/test_cuda.py
    step "GPU benchmark" 27 "$PY" -m benchmarks.gpu --device "$DEVICE" --scale "$SCALE" --repeats 3 \
        --out "$OUT/gpu_bench.txt"
    if [ "${GPU_CHECK_PROFILE:-0}" = 1 ]; then
        step "profile of the fused denoise" 20 "$PY" -m benchmarks.gpu --device "$DEVICE" --scale "$SCALE" \
            --profile fused --out "$OUT/gpu_profile.txt"
    fi
    step "Triton interpreter tests (CPU)" 15 "$PY" -m pytest -x -q --noconftest -p no:cacheprovider \
        tests/test_fused_interp.py
    echo "== total $(( $(date +%s) - start ))s"
} 2>&1 | tee "$LOG"
