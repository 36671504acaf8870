#!/usr/bin/env bash
# Quant-Noise against plain QAT (issue 25): the same recipe, steps and seeds, with and without the noise, each run an
# artifact of its own under OUT (never the catalog's folders), evaluated on the task's dev split.
#   scripts/quant-noise-study.sh [OUT]      env: TASKS ("sst2 ner"), PRECISIONS ("w3g128-qat w2g128-qat mp23"),
#                                                SEEDS ("0 1 2"), NOISE ("0.5,block,8")
# Then: python3 scripts/quant-noise-table.py OUT   (mean and spread per task, precision and recipe)
set -euo pipefail
out=${1:-quant-noise-study}
bin=${VENV:-.venv}/bin
mkdir -p "$out"
for task in ${TASKS:-sst2 ner}; do
  for precision in ${PRECISIONS:-w3g128-qat w2g128-qat mp23}; do
    for seed in ${SEEDS:-0 1 2}; do
      for recipe in plain noise; do
        name="$precision-$recipe-seed$seed"
        [[ -f "$out/$task/$name/manifest.json" ]] && continue
        noise=() && [[ $recipe == noise ]] && noise=(--quant-noise "${NOISE:-0.5,block,8}")
        start=$(date +%s)
        "$bin/qbert" --threads "$(nproc)" quantize --task "$task" --precision "$precision" --qat-seed "$seed" \
          "${noise[@]}" --name "$name" --out "$out/$task/$name" >"$out/$task-$name.log" 2>&1
        echo "$task $name $(( $(date +%s) - start )) s: $(grep -o '[a-z_0-9]*: [0-9.]* on' "$out/$task-$name.log" | head -1)"
      done
    done
  done
done
