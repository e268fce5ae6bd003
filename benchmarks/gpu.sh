#!/usr/bin/env bash
# Packed against unpacked training steps on one CUDA GPU: tokens/s and MFU (issue #13).
#
# A thin wrapper of benchmarks/pack.py --device cuda (the timing code lives there): the paper's
# 1L d32 cell (V 2048, S 64; K 1/4/16/64), 2L d128 (K 1/4/16) and the 20M rung (conf/model/20M.yaml,
# K 1/4), fp32 (TF32 off, as a memsweep cell runs) and bf16, batch 128, then 1L d32 at the paper's
# batch 2048; both packed forwards (vmap, batched) against the unpacked cell's step. MFU is against
# the peak of a large matmul measured in the run, and against the datasheet peak for known devices.
# Prints one table and keeps it in $OUT/gpu-results.{txt,json} when OUT is set, else in
# benchmarks/gpu-results.{txt,json}. Needs memsweep installed (pip install -e .) with a CUDA torch.
#
#   bash benchmarks/gpu.sh                                   # about 2-4 minutes on an H100/H200
#   PRECISIONS="fp32 tf32 bf16" bash benchmarks/gpu.sh       # also fp32 weights with TF32 matmuls
#   COMPILE=1 bash benchmarks/gpu.sh                         # also torch.compile of the batched forward
#   COMPILE=1 COMPILE_MODE=reduce-overhead bash benchmarks/gpu.sh   # ... with CUDA graphs
#
# Guards: no new group of rows starts after BUDGET_S seconds (default 330; those rows say "not run"),
# and `timeout` ends the whole run at LIMIT_S (default 450 s, 7.5 minutes). Compiling every variant
# can spend the budget: with COMPILE=1 the later groups may read "not run".
# Exit: 0 done, 2 no CUDA device, 3 memsweep not importable, 124 killed by the time guard.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
PRECISIONS=${PRECISIONS:-fp32 bf16}
LIMIT_S=${LIMIT_S:-450}
BUDGET_S=${BUDGET_S:-330}
DEST=${OUT:-benchmarks}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "benchmarks/gpu.sh: $PYTHON cannot import torch; install a CUDA build of torch, then pip install -e ." >&2
    exit 2
fi
if ! "$PYTHON" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    print(f"benchmarks/gpu.sh: no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
          "sees none. This benchmark needs one CUDA GPU (on a CPU run benchmarks/pack.py instead).", file=sys.stderr)
    sys.exit(2)
EOF
then
    exit 2
fi
if ! missing=$("$PYTHON" -c "import lightning, yaml, memsweep.pack, memsweep.conf" 2>&1); then
    echo "benchmarks/gpu.sh: memsweep is not importable (${missing##*$'\n'}); run: pip install -e ." >&2
    exit 3
fi

mkdir -p "$DEST"
TXT="$DEST/gpu-results.txt"
JSON="$DEST/gpu-results.json"
extra=()
if [[ "${COMPILE:-0}" == 1 ]]; then
    extra+=(--compile)
    [[ -n "${COMPILE_MODE:-}" ]] && extra+=(--compile-mode "$COMPILE_MODE")
fi

{
    echo "benchmarks/gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || true
    fi
} | tee "$TXT"

set +e
# shellcheck disable=SC2086  # PRECISIONS is a list of words
PYTHONUNBUFFERED=1 timeout --signal=TERM --kill-after=20 "$LIMIT_S" \
    "$PYTHON" benchmarks/pack.py --device cuda --precisions $PRECISIONS \
    --configs paper-1L-d32:1,4,16,64 paper-2L-d128:1,4,16 20M:1,4 paper-1L-d32@2048:1,4,16,64 \
    --warmup 3 --steps 20 --repeats 5 --budget-s "$BUDGET_S" --json "$JSON" ${extra[@]+"${extra[@]}"} 2>&1 | tee -a "$TXT"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc == 124 || $rc == 137 ]]; then
    echo "benchmarks/gpu.sh: stopped by the ${LIMIT_S} s time guard; the rows above are all that was measured" | tee -a "$TXT"
fi
if [[ -f "$JSON" ]]; then echo "table: $TXT; rows as JSON: $JSON (exit $rc)"; else echo "table: $TXT (exit $rc)"; fi
exit "$rc"
