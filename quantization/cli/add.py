"""`qbert add`: serve a user's own fine-tuned checkpoint by name (checked, written to the user catalog, built)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from quantization.cli.output import emit
from quantization.tasks import KINDS

logger = logging.getLogger("qbert")

DEFAULT_PRECISIONS = ("fp32", "w8", "w4g128")


def cmd_add(args: argparse.Namespace) -> int:
    from quantization.adding import AddError, ModelToAdd, entry_for, write_user_entry
    from quantization.catalog import user_catalog_path

    columns = {
        key: value
        for key, value in (("text", args.text_column), ("pair", args.pair_column), ("label", args.label_column))
        if value
    }
    try:
        model = ModelToAdd(
            name=args.name,
            kind=args.kind,
            checkpoint=args.checkpoint,
            eval_data=Path(args.eval_data) if args.eval_data else None,
            precisions=tuple(args.precisions.split(",")) if args.precisions else DEFAULT_PRECISIONS,
            train_data=Path(args.train_data) if args.train_data else None,
            columns=columns,
            qat_steps=args.qat_steps,
        )
        table = entry_for(model)
    except AddError as exc:
        logger.error("qbert add: %s", exc)
        return 2
    path = user_catalog_path()
    write_user_entry(path, model.name, table)
    emit(f"{model.name}: added to {path} ({model.kind}, {', '.join(model.precisions)})")
    if args.no_build:
        return 0
    from quantization.catalog import load_catalog
    from quantization.cli.artifacts import cmd_build
    from quantization.mixed_plans import make_qbert_plan, missing_plans

    catalog = load_catalog()
    for plan in missing_plans(catalog, model.name, model.precisions):
        written = make_qbert_plan(catalog, model.name, plan, args.hessian_batches, args.hessian_batch_size)
        emit(f"{model.name}: Q-BERT plan {plan} from its Hessian on {args.hessian_batches} training batches: {written}")

    return cmd_build(
        argparse.Namespace(task=[model.name], precision=None, study=False, force=False, batch_size=args.batch_size)
    )


def register(sub: Any) -> None:
    p = sub.add_parser("add", help="serve your own fine-tuned checkpoint by name: check it, add it, build it")
    p.add_argument("name", help="the model's name: its route is POST /predict/NAME")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a Hugging Face folder (config, weights, tokenizer), or a hub id where a hub is reachable",
    )
    p.add_argument(
        "--eval-data",
        help="GLUE-style TSV, CoNLL IOB file or SQuAD JSON, by kind: each precision's accuracy is measured on it "
        "(without it, none is, and `/models` shows no accuracy)",
    )
    p.add_argument("--train-data", help="the same format; GPTQ calibration and QAT read it, never the eval data")
    p.add_argument("--precisions", help=f"comma-separated (default: {','.join(DEFAULT_PRECISIONS)})")
    p.add_argument("--text-column", help="sequence classification: the TSV's text column (default: sentence)")
    p.add_argument("--pair-column", help="sequence classification: the second text's column, for pair models")
    p.add_argument("--label-column", help="sequence classification: the label column (default: label)")
    p.add_argument("--qat-steps", type=int, help="QAT precisions (e.g. w4g128-qat): training steps (default 600)")
    p.add_argument("--hessian-batches", type=int, default=10, help="mixed plans (mp23): training batches measured")
    p.add_argument("--hessian-batch-size", type=int, default=16)
    p.add_argument("--no-build", action="store_true", help="only check and add; `qbert build --task NAME` builds")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_add)
