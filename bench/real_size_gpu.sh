#!/bin/bash
# The real-size benchmark on a GPU machine, in one command (run from the repository root):
#   OUT=/some/dir bash bench/real_size_gpu.sh [SIZE] [extra bench/real_size.py flags]     SIZE: 3b (default) or 7b
# Prepared on CPU beforehand: `bash bench/gpu/wheels.sh` (the ~25 MB of wheels a bare GPU machine lacks, into
# .whl/); with the device tool: run(command="OUT=$OUT bash bench/real_size_gpu.sh 3b", carry=[".whl"]).
# Writes $OUT/real_size_<size>.log and .json, and the backbone once to /tmp/real_size_<size> (reused by a second
# call on the same warm machine, e.g. `... 3b --only latency --compile-mode reduce-overhead`).
# CPU dry run of this script: `SITE=/tmp/rs_site DEVICE=cpu PY=.venv/bin/python bash bench/real_size_gpu.sh small --quick`.
# Expected on an H200: about 12 s to build the 3B backbone, 2-3 min of SFT, under a minute for the [loss] section
# (one step per loss.impl: plain, chunked, liger when its wheel is carried), under a minute of VLA steps and eager
# latencies, 1-2 min of inductor compilation, then export and two server start-ups: 7-9 min in all.
# `--load-baseline` adds the old random-init policy loading to [load] (minutes of CPU initialisation at 3B).
set -u
SIZE=${1:-3b}; shift || true
OUT=${OUT:-/tmp/real_size_out}; mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VST_VLA_CACHE=/tmp/vstcache WANDB_DISABLED=true
PY=${PY:-python3}; SITE=${SITE:-/tmp/site}
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  # Wheels go into a side directory first on the path: the machine's own torch stays untouched.
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  if ! $PY -c "import av" 2>/dev/null; then  # PyAV (40 MB) is not carried: nothing here decodes video
    mkdir -p "$SITE/av" "$SITE/av-15.1.0.dist-info" && cp bench/gpu/av_stub.py "$SITE/av/__init__.py"
    printf 'Metadata-Version: 2.1\nName: av\nVersion: 15.1.0\n' >"$SITE/av-15.1.0.dist-info/METADATA"
  fi
  export PYTHONPATH=$SITE:$ROOT
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers, trl, lerobot; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'lerobot', lerobot.__version__)" || exit 1
LOG=$OUT/real_size_$SIZE.log
timeout "${TIMEOUT:-570}" $PY bench/real_size.py --size "$SIZE" --device "${DEVICE:-cuda}" --model-dir "/tmp/real_size_$SIZE" \
  --json-out "$OUT/real_size_$SIZE.json" "$@" 2>&1 | tee "$LOG" | grep -v -E 'Loading weights|Writing model|it/s\]'
echo "exit ${PIPESTATUS[0]}; log $LOG"
