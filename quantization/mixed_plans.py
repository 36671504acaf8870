"""Q-BERT's Hessian mixed-precision plan for a model added with `qbert add`: the sensitivity of each encoder block on
its training data, then Q-BERT's rule (the more sensitive half of the blocks at the higher width), written where the
catalog's plan-following precisions read it (`plans_dir()/NAME/PLAN.json`, the Hessian beside it)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from quantization.catalog import Catalog, plans_dir

# Plans a new model can be given from its own Hessian: `mpLH`, Q-BERT's rule over widths L and H (mp23: 2 and 3).
QBERT_PLAN = re.compile(r"^mp([2-8])([2-8])$")
TRACE_SAMPLES = 20  # Hutchinson samples at most per batch (README: reproducing Q-BERT)


def plan_widths(plan: str) -> tuple[int, int]:
    """The (low, high) widths of a Q-BERT plan name; ValueError for any other plan (they compare or budget against
    the built-in tasks' own plans)."""
    match = QBERT_PLAN.match(plan)
    if not match or match.group(1) >= match.group(2):
        raise ValueError(f"plan {plan!r}: a new model's plan is Q-BERT's rule over two widths, named mpLH (e.g. mp23)")
    return int(match.group(1)), int(match.group(2))


def missing_plans(catalog: Catalog, task: str, precisions: tuple[str, ...]) -> list[str]:
    """The plans `precisions` follow that `task` does not have yet."""
    plans = {catalog.plans[p] for p in precisions if p in catalog.plans}
    return sorted(plan for plan in plans if not (plans_dir() / task / f"{plan}.json").is_file())


def make_qbert_plan(
    catalog: Catalog,
    task: str,
    plan: str,
    batches: int,
    batch_size: int,
    on_block: Callable[[object], None] | None = None,
) -> Path:
    """Measure `task`'s block sensitivities on `batches` training batches and write plan `plan` (Q-BERT's rule)."""
    from quantization.allocation import allocation_plan
    from quantization.build import load_checkpoint
    from quantization.sensitivity import sensitivities_to_dict
    from quantization.sensitivity_study import SensitivityStudy, measure_sensitivity

    low, high = plan_widths(plan)
    entry = catalog.task(task)
    precision = next(p for name, p in catalog.precisions.items() if catalog.plans.get(name) == plan)
    if precision.weights is None:
        raise ValueError(f"plan {plan!r}: its precisions quantize no weights")
    # the plan's costs weigh each Linear by its Hessian trace: Hutchinson samples, as `qbert hessian` takes them
    study = SensitivityStudy(batches=batches, batch_size=batch_size, trace_samples=TRACE_SAMPLES)
    results, meta = measure_sensitivity(entry, study, on_block=on_block)
    checkpoint = load_checkpoint(entry.checkpoint_location(), entry.make_task())
    allocated = allocation_plan(checkpoint.model, results, precision.weights, [low, high], "qbert")
    out_dir = plans_dir() / task
    out_dir.mkdir(parents=True, exist_ok=True)
    hessian = out_dir / "hessian.json"
    hessian.write_text(json.dumps(sensitivities_to_dict(results, meta), indent=2) + "\n")
    record = {"task": task, "base": precision.name, **allocated.record(), "hessian": hessian.name}
    out = out_dir / f"{plan}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out
