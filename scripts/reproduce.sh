#!/usr/bin/env bash
# The Q-BERT reproduction (issue 3), task by task: Hessian sensitivity, bit-allocation plans, the study's
# artifacts (QAT, mixed precision, ablations), then the report. Work already done is kept: `qbert build` skips
# artifacts whose inputs did not change, and the Hessian and plans are recomputed only with --hessian.
# About 40 min for SST-2, 30 for CoNLL-03 and 90 for SQuAD on 2 cores.
set -euo pipefail
QBERT=${QBERT:-.venv/bin/qbert}
TASKS=${TASKS:-"sst2 ner qa"}

hessian_options() {
    case "$1" in
        qa) echo "--batches 10 --batch-size 4 --max-length 256 --trace-samples 10" ;;
        *) echo "--batches 10 --batch-size 16 --max-length 128 --trace-samples 20" ;;
    esac
}

for task in $TASKS; do
    if [[ "${1:-}" == "--hessian" || ! -f "models/hessian/$task.json" ]]; then
        # shellcheck disable=SC2046
        $QBERT --threads 2 hessian --task "$task" $(hessian_options "$task")
    fi
    if [[ "${1:-}" == "--hessian" || ! -f "models/plans/$task/budget.json" ]]; then
        $QBERT allocate --task "$task" --name mp23 --rule qbert --bits 2,3
        $QBERT allocate --task "$task" --name mp23-reversed --rule reversed --bits 2,3
        $QBERT allocate --task "$task" --name mp24 --rule qbert --bits 2,4
        $QBERT allocate --task "$task" --name budget --rule budget --bits 2,3,4,8 --budget-as mp23
    fi
    if [[ "${1:-}" == "--hessian" || ! -f "models/plans/$task/mp12.json" ]]; then
        $QBERT allocate --task "$task" --name mp12 --rule qbert --bits 1,2 --base ptq161  # PTQ1.61 and 2-bit blocks
    fi
    $QBERT --threads 2 build --study --task "$task"
done
$QBERT report
