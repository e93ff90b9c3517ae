#!/bin/bash
# GPU checks of stacked runs (issue #20), on a machine with one CUDA device, from the
# repository root with wsram importable. About 7 minutes; stops at the first failure.
#   bash benchmarks/gpu_stack_check.sh            # OUT=dir for the files (default .)
# 1. a stacked run on CUDA trains, checkpoints and resumes through the command, and its
#    runs evaluate alone;
# 2. a single run with the update as a CUDA graph (--cuda-graphs true) trains through the
#    command; fails loudly if the capture fell back to eager code or nothing was replayed;
# 3. study throughput and memory: one process per run (--jobs 2) against stacks of
#    R = 1 .. 256, eager and graphed, for var+c and wsram+q+c at the default setup
#    (docs/performance.md, Stacked runs: the table to fill, stack.DEFAULT_STACK_SIZE["cuda"]
#    to set from it; targets: 9,000 run-updates/s in one process, one run graphed 5x eager).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
TMP=$(mktemp -d)
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu_stack_check.txt"

echo "== 1. a stack of 4 on CUDA: train, interrupt-free resume, evaluate" | tee -a "$OUT/gpu_stack_check.txt"
python3 -m wsram train --run-dir "$TMP/stack" --device cuda --method wsram+q+c \
  --seeds 0 1 --lrs 0.001 0.003 --steps 60 --eval-every 30 --checkpoint-every 30 \
  --log-every 10 --diag-every 0 --no-progress > "$TMP/train.out"
python3 -m wsram train --run-dir "$TMP/stack" --device cuda --resume --seeds 0 1 \
  --lrs 0.001 0.003 --steps 80 --no-progress --json > "$TMP/resume.out"
test "$(grep -c '"step": 80,' "$TMP/resume.out")" = 4 || { echo "FAIL: resume"; exit 1; }
python3 -m wsram evaluate "$TMP/stack/lr0.003-seed1" | tail -3 | tee -a "$OUT/gpu_stack_check.txt"

echo "== 2. one run with --cuda-graphs true" | tee -a "$OUT/gpu_stack_check.txt"
python3 -m wsram train --run-dir "$TMP/graphed" --device cuda --cuda-graphs true \
  --method wsram+q+c --steps 60 --eval-every 30 --checkpoint-every 30 --diag-every 0 \
  --no-progress 2> "$TMP/graphed.err"
cat "$TMP/graphed.err" >> "$OUT/gpu_stack_check.txt"
if grep -q "CUDA graph capture failed" "$TMP/graphed.err"; then
  echo "FAIL: the capture fell back to eager code"; exit 1; fi
grep -q "CUDA graphs: [1-9][0-9]* updates\? replayed" "$TMP/graphed.err" || {
  echo "FAIL: no update was replayed from a graph"; exit 1; }
python3 -m wsram evaluate "$TMP/graphed" | tail -3 | tee -a "$OUT/gpu_stack_check.txt"

echo "== 3. throughput and memory" | tee -a "$OUT/gpu_stack_check.txt"
python3 benchmarks/stacked.py --device cuda --threads 1 --seconds 3 \
  --sizes 1 4 16 64 256 --graph-sizes 1 4 16 64 256 | tee -a "$OUT/gpu_stack_check.txt"
if grep -q "failed:" "$OUT/gpu_stack_check.txt"; then echo "FAIL: a stack failed"; exit 1; fi
rm -rf "$TMP"
echo "ok: figures in $OUT/gpu_stack_check.txt"
