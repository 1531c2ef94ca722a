#!/usr/bin/env bash
# The pretrained-model recipe measured (README, "A real pretrained model, offline"; docs/results/pretrained_recipe.md): per seed, one bootstrap round of
# conf/preset/smollm2_sql.yaml, then the same bootstrapped run branched into each method (the run directory copied
# after round 1 and continued with resume=force: every branch starts from the one bootstrap adapter), 2 rounds
# each. Prints the table and writes bench/results/pretrained_recipe.json.
#   bash bench/pretrained_recipe.sh                    # SEEDS="0 1" METHODS="codelutra sft sft_gold" by default
#   SEEDS=0 METHODS=codelutra OUT=/tmp/recipe bash bench/pretrained_recipe.sh
# Needs `python -m lutra.prepare model=smollm2_135m` first. Two runs at a time (JOBS=2), one thread each.
set -euo pipefail
SEEDS=${SEEDS:-0 1}
METHODS=${METHODS:-codelutra sft sft_gold}
OUT=${OUT:-outputs/recipe}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=offline
mkdir -p "$OUT/logs"
train() {  # each run's console output kept beside its run directory (train.log holds the log, not a traceback)
  local log="$OUT/logs/$(echo "$*" | tr -c 'A-Za-z0-9=._-' '_').log"
  python -m lutra.train +preset=smollm2_sql "$@" >"$log" 2>&1 || { echo "failed: $* (see $log)" >&2; return 1; }
}
boot() {  # seed
  train seed="$1" rounds=1 hydra.run.dir="$OUT/boot-s$1"
}
branch() {  # seed method
  local dir="$OUT/$2-s$1" extra=()
  rm -rf "$dir" && cp -r "$OUT/boot-s$1" "$dir"
  # sft_gold at codelutra's optimizer steps of the same seed when known (its default cap is the embedded default's)
  if [ "$2" = sft_gold ] && [ -f "$OUT/codelutra-s$1/manifest.json" ]; then
    extra+=(method.max_steps_per_round="$(python -c "import json,sys; s=json.load(open(sys.argv[1]))['train_steps']; \
print(max(1, round(sum(v for k, v in s.items() if int(k) > 1) / max(1, len(s) - 1))))" "$OUT/codelutra-s$1/manifest.json")")
  fi
  train seed="$1" method="$2" resume=force hydra.run.dir="$dir" "${extra[@]}"
}
for s in $SEEDS; do boot "$s" & while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done; done; wait
for m in $METHODS; do for s in $SEEDS; do [ "$m" = sft_gold ] && continue  # after codelutra: it copies its steps
  branch "$s" "$m" & while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done
done; done; wait
if [[ " $METHODS " == *" sft_gold "* ]]; then
  for s in $SEEDS; do branch "$s" sft_gold & while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done; done; wait
fi
python bench/pretrained_table.py "$OUT" bench/results/pretrained_recipe.json
