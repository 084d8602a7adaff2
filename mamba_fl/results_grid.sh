#!/usr/bin/env bash
# The README results table: 3 seeds x {central, FedAvg, FedMomentum, FedEntropy, FedFisher} x {1, 2, 4} layers
# on the embedded synthetic WikiText, with a scaled-down Mamba2 (d_model 64, d_state 16, head dim 16,
# 64-token blocks), one thread per run. On a 2-core machine shared with a dozen other jobs the 45 runs took
# 57 minutes with 3 to 10 of them in parallel; each is a few minutes of one idle core or less.
#
#   JOBS=3 OUT=runs/mamba_grid bash mamba_fl/results_grid.sh      # then:
#   python plots/plot_mamba.py --runs runs/mamba_grid runs/mamba_extra --out figures/mamba   # figures + results.md
#
# Equal work for every method: 40 rounds x 4 clients x 1 local step x 8 blocks = 40 centralized steps of
# 32 blocks (the source matched central batch 16 to 4 clients x batch 4 the same way). lr 1e-2: the
# source's 5e-4 was for d_model 512 and thousands of steps; at this size and length it barely moves.
set -euo pipefail
OUT=${OUT:-runs/mamba_grid}
JOBS=${JOBS:-3}
SEEDS=${SEEDS:-"0 1 2"}
MODEL="--d-model 64 --d-state 16 --head-dim 16 --sequence-length 64 --lr 1e-2 --sample-tokens 16 --quiet --out-dir $OUT"
FED="--num-clients 4 --local-updates 1 --batch-size 8 --rounds 40 --val-freq 10"
cmds=()
for s in $SEEDS; do
  for L in 1 2 4; do
    cmds+=("mamba_fl/central.py --layers $L --seed $s $MODEL --batch-size 32 --max-steps 40 --val-freq 10")
    cmds+=("mamba_fl/fed_avg.py --layers $L --seed $s $MODEL $FED")
    cmds+=("mamba_fl/fed_momentum.py --layers $L --seed $s $MODEL $FED")
    cmds+=("mamba_fl/fed_entropy.py --layers $L --seed $s $MODEL $FED --entropy-blocks 16")
    cmds+=("mamba_fl/fed_fisher.py --layers $L --seed $s $MODEL $FED --fisher-samples 8")
  done
done
mkdir -p "$OUT"
printf '%s\n' "${cmds[@]}" | xargs -P "$JOBS" -I{} sh -c \
  'OMP_NUM_THREADS=1 '"${PYTHON:-python}"' {} >> '"$OUT"'/grid.log 2>&1 || echo "FAILED: {}" >> '"$OUT"'/grid.log'

# Figure runs beside the table: parameter deltas (2 layers, seed 0) and 8 local updates per round at the same
# client compute (5 rounds x 8 steps = 40 rounds x 1 step).
EXTRA=${EXTRA:-runs/mamba_extra}
E="--d-model 64 --d-state 16 --head-dim 16 --sequence-length 64 --lr 1e-2 --sample-tokens 16 --quiet --out-dir $EXTRA"
run() { OMP_NUM_THREADS=1 "${PYTHON:-python}" "$@" >> "$EXTRA/extra.log" 2>&1 || echo "FAILED: $*" >> "$EXTRA/extra.log"; }
mkdir -p "$EXTRA"
run mamba_fl/fed_avg.py --layers 2 --seed 0 $E $FED --save-deltas
run mamba_fl/central.py --layers 2 --seed 0 $E --batch-size 32 --max-steps 40 --val-freq 10 --save-deltas
for s in $SEEDS; do
  run mamba_fl/fed_avg.py --layers 1 --seed $s $E --num-clients 4 --local-updates 8 --batch-size 8 --rounds 5 --val-freq 1
done
echo "done: $(ls -d "$OUT"/*/ | wc -l) run directories in $OUT, $(ls -d "$EXTRA"/*/ | wc -l) in $EXTRA"
