#!/usr/bin/env bash
# The GPU measurements of the speed issues, as run on a lent GPU machine (docs/performance.md has the results).
#
#   bench/gpu_session.sh speed OUT     # compare.py: post-processing, the 4952-image evaluation (both decoders),
#                                      # the GPU input pipeline, training from JPEG files, the training step (eager and
#                                      # compiled), then the compiled forward with its kernel profile (< 8 min)
#   bench/gpu_session.sh speed2 OUT    # the decoder race check, the evaluation and training from files on VOC07train300
#   bench/gpu_session.sh forward OUT   # the compiled forward of both models and where its GPU time goes
#   bench/gpu_session.sh profile OUT   # where the time-to-accuracy run's time goes: training end to end on VOC07train300
#                                      # (BatchNorm, AdamW, batch 64) with each loader, against its step in memory (< 4 min)
#   bench/gpu_session.sh tta OUT       # time to accuracy: 400 s of training on VOC07train300 + evaluation
#
# Data is read from .work/ (git-ignored; copy it there and name it in the device tool's `carry`):
#   .work/VOCmini/VOCdevkit/VOC2007 (speed: all of it; speed2, forward, tta: test only) and
#   .work/VOC07train300/VOCdevkit/VOC2007 (speed2, profile, tta); both whole are over the tool's 64 MiB.
# Runs from the source tree: PYTHONPATH=src, nothing installed. Each compare.py run writes its JSON after every
# section, so a run stopped by its time limit keeps what it measured.
set -uo pipefail
what=${1:?speed, speed2, forward, profile or tta}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
VOCMINI=${VOCMINI:-.work/VOCmini/VOCdevkit/VOC2007}
TRAIN300=${TRAIN300:-.work/VOC07train300/VOCdevkit/VOC2007}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"
quiet() { grep -v '^ \|^{\|^}\|^\[' ; }
case $what in
speed)
    timeout ${SPEED_S:-330} python3 bench/compare.py --device cuda --channels-last --voc "$VOCMINI" \
        --only post eval input_gpu train_e2e train train_compiled --eval-decode cpu device --train-compile default reduce-overhead \
        --out "$out/compare.json" 2>&1 | tee "$out/compare.log" | quiet
    # The stretch figure: the forward with both models compiled (same flags otherwise), and where its time goes.
    timeout ${FORWARD_S:-120} python3 bench/compare.py --device cuda --channels-last --compile --profile --only forward \
        --dtypes bf16 --voc "$VOCMINI" --out "$out/compare_compiled.json" 2>&1 | tee "$out/compare_compiled.log" | quiet
    ;;
speed2)
    # The rerun after the decoder fix: the decoder race, the evaluation with a trained model's candidate count,
    # training end to end on VOC07train300 (SSD300, SGD, batch 64), then the compiled forward's kernel profile.
    python3 bench/decode_race.py --voc "$TRAIN300" --out "$out/decode_race.json" 2>&1 | tee "$out/decode_race.log"
    timeout ${SPEED_S:-150} python3 bench/compare.py --device cuda --channels-last --voc "$VOCMINI" --only eval train_e2e \
        --eval-decode cpu device --e2e-voc "$TRAIN300" --out "$out/compare.json" 2>&1 | tee "$out/compare.log" | quiet
    ;;
forward)
    timeout ${FORWARD_S:-120} python3 bench/compare.py --device cuda --channels-last --compile --profile --only forward \
        --dtypes bf16 --voc "$VOCMINI" --out "$out/compare_compiled.json" 2>&1 | tee "$out/compare_compiled.log" | quiet
    ;;
profile)
    for loader in device cpu; do
        flag=$([ $loader = cpu ] && echo --e2e-cpu-loader)
        timeout ${PROFILE_S:-110} python3 bench/compare.py --device cuda --channels-last --only train_e2e --e2e-voc "$TRAIN300" \
            --e2e-batch-norm --e2e-optimizer adamw --e2e-iters 200 --workers 14 $flag \
            --out "$out/e2e_$loader.json" 2>&1 | tee "$out/e2e_$loader.log" | quiet
    done
    ;;
tta)
    timeout 540 python3 bench/time_to_accuracy.py --train-voc "$TRAIN300" --test-voc "$VOCMINI" --seconds "${SECONDS_BUDGET:-400}" \
        --preset "${PRESET:-ssd300}" --batch-size "${BATCH:-64}" --lr "${LR:-2e-3}" --weight-decay "${WD:-0.01}" \
        --workers "${WORKERS:-14}" --out "$out" --work /tmp/tta-run 2>&1 | tee "$out/tta.log" | grep -v "^ "
    ;;
*) echo "unknown: $what" >&2; exit 2 ;;
esac
