"""`qbert add`: a user's fine-tuned checkpoint checked and written into the user catalog as a served model.

Everything is checked before anything is written: the folder's config, weights and tokenizer, that its architecture
and head are ones the runtime serves for the named kind, and that the evaluation data's labels are the model's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantization.architectures import UnsupportedArchitectureError, check_architecture
from quantization.catalog import TaskEntry, entry_from_table, load_catalog, read_user_entries
from quantization.mixed_plans import plan_widths
from quantization.tasks import KINDS, get_kind, task_from_spec

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model")  # one of them, at least


class AddError(ValueError):
    """A model that cannot be added: the message names the file or field at fault and what would do."""


@dataclass(frozen=True)
class ModelToAdd:
    """What `qbert add` was asked for."""

    name: str
    kind: str
    checkpoint: str  # a local folder, or a hub id where a hub is reachable
    eval_data: Path | None
    precisions: tuple[str, ...]
    train_data: Path | None = None
    columns: dict[str, str] = field(default_factory=dict)  # sequence classification: text, pair, label
    qat_steps: int | None = None  # QAT precisions' training steps (the recipe's default otherwise)

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise AddError(f"name {self.name!r}: use 1-64 lowercase letters, digits, '-' or '_' (it becomes a URL)")
        if self.kind not in KINDS:
            raise AddError(f"kind {self.kind!r}: supported kinds are {', '.join(KINDS)}")
        if self.columns and "columns" not in get_kind(self.kind).options:
            raise AddError(f"text, pair and label columns do not apply to the {self.kind} kind")


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def local_folder(checkpoint: str) -> Path:
    """`checkpoint` as a local folder: itself, or a hub id's snapshot (config, weights and tokenizer files only)."""
    folder = Path(checkpoint)
    if folder.is_dir() or not HUB_ID.match(checkpoint):
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(checkpoint, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # offline, unknown repository, no access: the hub's own exception types vary
        raise AddError(
            f"{checkpoint}: not a local folder, and the hub could not give it ({type(exc).__name__}: {exc})"
        ) from None


def check_checkpoint(directory: Path, kind: str) -> dict[str, Any]:
    """The checkpoint's config as a dict, once its files, architecture and head are known to serve as `kind`."""
    if not directory.is_dir():
        raise AddError(f"{directory}: no such folder (a local Hugging Face checkpoint folder is expected)")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise AddError(f"{config_file}: missing; a Hugging Face checkpoint folder holds its config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise AddError(f"{config_file}: not valid JSON ({exc})") from None
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        found = sorted(p.name for p in directory.iterdir())
        raise AddError(
            f"{directory}: no weights ({' or '.join(WEIGHT_FILES)}; pickled .bin files are not loaded); has {found}"
        )
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise AddError(f"{directory}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer with the model")
    try:
        check_architecture(config, task_from_spec(kind, {"kind": kind, "options": {}}).architecture_suffix)
    except UnsupportedArchitectureError as exc:
        raise AddError(f"{config_file}: {exc}") from None
    return config


def labels_of(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


def entry_for(model: ModelToAdd) -> dict[str, Any]:
    """The user catalog's table for `model`, once every check passed (raises AddError naming what failed)."""
    folder = local_folder(model.checkpoint)
    config = check_checkpoint(folder, model.kind)
    kind = get_kind(model.kind)
    chosen = {"columns": model.columns} if model.columns else {}
    options = kind.entry_options(config, chosen) if kind.entry_options is not None else {}
    catalog = load_catalog()
    if model.name in catalog.tasks and model.name not in read_user_entries():
        raise AddError(f"name {model.name!r} is taken by a catalog model; choose another")
    unknown = [p for p in model.precisions if p not in catalog.precisions]
    if unknown:
        raise AddError(f"precisions {unknown} are not defined; defined: {', '.join(sorted(catalog.precisions))}")
    for precision in model.precisions:
        plan = catalog.plans.get(precision)
        if plan:
            try:
                plan_widths(plan)
            except ValueError as exc:
                raise AddError(f"precision {precision!r}: {exc}") from None
        needs = catalog.precision(precision)
        rounding = needs.weights.rounding if needs.weights is not None else "nearest"
        if (plan or needs.qat is not None or rounding == "gptq") and model.train_data is None:
            raise AddError(
                f"precision {precision!r} measures, trains or calibrates on training data: give --train-data FILE"
            )
    for path, what in ((model.eval_data, "evaluation"), (model.train_data, "training")):
        if path is not None and not path.is_file():
            raise AddError(f"{path}: no such {what} data file")
    table: dict[str, Any] = {
        "kind": model.kind,
        # a folder by its absolute path; a hub id as given (loading fetches it where a hub is reachable)
        "checkpoint": str(Path(model.checkpoint).resolve()) if Path(model.checkpoint).is_dir() else model.checkpoint,
        "precisions": list(model.precisions),
    }
    if model.eval_data is not None:
        table["data"] = str(model.eval_data.resolve())
    if options:
        table["options"] = options
    if model.train_data is not None:
        table["training"] = {"data": str(model.train_data.resolve())}
        if model.qat_steps is not None:
            table["training"]["qat"] = {"steps": model.qat_steps}
    entry = _entry(model.name, table)
    _check_data(entry, labels_of(config))
    return table


def _entry(name: str, table: dict[str, Any]) -> TaskEntry:
    try:
        return entry_from_table(name, table)
    except (TypeError, ValueError) as exc:
        raise AddError(str(exc)) from None


def _check_data(entry: TaskEntry, labels: list[str]) -> None:
    """The evaluation (and training) files read in the kind's format, with labels the model has."""
    task = entry.make_task()
    for path in (entry.data, entry.train_data):
        if path is None:
            continue
        try:
            examples = task.read_examples(path)
        except (OSError, ValueError, KeyError) as exc:
            raise AddError(f"{path}: not readable as {task.kind} data ({exc})") from None
        if not examples:
            raise AddError(f"{path}: no examples")
        try:
            task.check_labels(examples, labels)
        except ValueError as exc:
            raise AddError(f"{path}: {exc}") from None


def write_user_entry(path: Path, name: str, table: dict[str, Any]) -> None:
    """Add or replace `[tasks.NAME]` in the user catalog at `path` (TOML written by hand: JSON strings are TOML's
    basic strings, so every value is written as JSON)."""
    entries = read_user_entries(path)
    entries[name] = table
    lines = ["# Models added with `qbert add`; read with models/catalog.toml.", ""]
    for entry_name, entry in entries.items():
        lines.append(f"[tasks.{json.dumps(entry_name)}]")
        nested = {k: v for k, v in entry.items() if isinstance(v, dict)}
        for key, value in entry.items():
            if key not in nested:
                lines.append(f"{key} = {json.dumps(value)}")
        for key, value in nested.items():
            lines.append(f"{key} = {_inline_table(value)}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


def _inline_table(value: dict[str, Any]) -> str:
    parts = [
        f"{json.dumps(k)} = {_inline_table(v) if isinstance(v, dict) else json.dumps(v)}" for k, v in value.items()
    ]
    return "{ " + ", ".join(parts) + " }"
