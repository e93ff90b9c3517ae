#!/bin/bash
# How the learning-rate grid in docs/study was trained: the 27 runs `wsram compare` would
# train (VAR+c, WS-RAM+c, WS-RAM+q+c x lr 0.001, 0.003, 0.01 x seeds 0, 1, 2), all at
# once on one GPU, each its own process, under CUDA MPS (which lets the small kernels of
# many processes share the GPU), with a time limit per run. Then every run's test errors,
# and the small files packed into $OUT/study.tgz (no checkpoints).
#   bash benchmarks/study_gpu.sh            # from the repository root, wsram importable
# (On a machine without network access, mlxtend came from a wheel: pip install --target.)
export PYTHONUNBUFFERED=1
OUTD=${STUDY_DIR:-runs/study}; OUT=${OUT:-.}; LIMIT=${TIME_LIMIT:-5.3}
nvidia-cuda-mps-control -d 2>/dev/null; sleep 1
mkdir -p "$OUTD"
t0=$(date +%s)
for m in var+c wsram+c wsram+q+c; do for lr in 0.001 0.003 0.01; do for s in 0 1 2; do
  d=$OUTD/$m/lr$lr-seed$s; mkdir -p "$d"
  python3 -m wsram train --config configs/study.yaml --run-dir "$d" --method $m --lr $lr \
    --seed $s --device cuda --threads 1 --no-progress --time-limit "$LIMIT" > "$d.log" 2>&1 &
done; done; done
wait
echo "trained in $(( $(date +%s) - t0 )) s"
for d in "$OUTD"/*/*/; do python3 -m wsram evaluate "$d" > "${d%/}.eval.log" 2>&1 & done
wait
echo "evaluated at $(( $(date +%s) - t0 )) s"
tar czf "$OUT/study.tgz" --exclude='*.pt' --exclude='tb' --exclude='.lock' "$OUTD"
