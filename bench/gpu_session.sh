#!/usr/bin/env bash
# The GPU measurements of the speed issue, as run on a lent H100 (docs/performance.md has the results).
#
#   bench/gpu_session.sh compare OUT   # side-by-side benchmark with torchvision, then the compiled forward (< 4 min)
#   bench/gpu_session.sh tta OUT       # time to accuracy: 400 s of training on VOC07train300 + evaluation
#
# Data is read from .work/ (git-ignored; copy it there and name it in the device tool's `carry`):
#   .work/VOCmini/VOCdevkit/VOC2007 and .work/VOC07train300/VOCdevkit/VOC2007
# Runs from the source tree: PYTHONPATH=src, nothing installed.
set -uo pipefail
what=${1:?compare or tta}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
VOCMINI=${VOCMINI:-.work/VOCmini/VOCdevkit/VOC2007}
TRAIN300=${TRAIN300:-.work/VOC07train300/VOCdevkit/VOC2007}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"
case $what in
compare)
    timeout 200 python3 bench/compare.py --device cuda --channels-last --voc "$VOCMINI" --out "$out/compare.json" \
        2>&1 | tee "$out/compare.log" | grep -v '^ \|^{\|^}'
    # The stretch figure: the forward with both models compiled (same flags otherwise).
    timeout 100 python3 bench/compare.py --device cuda --channels-last --compile --only forward --dtypes bf16 \
        --voc "$VOCMINI" --out "$out/compare_compiled.json" 2>&1 | tee "$out/compare_compiled.log" | grep -v '^ \|^{\|^}'
    ;;
tta)
    timeout 540 python3 bench/time_to_accuracy.py --train-voc "$TRAIN300" --test-voc "$VOCMINI" --seconds "${SECONDS_BUDGET:-400}" \
        --preset "${PRESET:-ssd300}" --batch-size "${BATCH:-64}" --lr "${LR:-2e-3}" --weight-decay "${WD:-0.01}" \
        --workers "${WORKERS:-14}" --out "$out" --work /tmp/tta-run 2>&1 | tee "$out/tta.log" | grep -v "^ "
    ;;
*) echo "unknown: $what" >&2; exit 2 ;;
esac
