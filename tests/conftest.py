"""Shared fixtures: tiny random BERTs built from a config, with a real WordPiece tokenizer."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("QBERT_CHECKPOINTS", REPO_ROOT.parent / "shared" / "models"))
SHARED_DATA = Path(os.environ.get("QBERT_DATA", REPO_ROOT.parent / "shared" / "data"))

_WORDS = [
    "the",
    "a",
    "an",
    "is",
    "was",
    "good",
    "bad",
    "great",
    "terrible",
    "movie",
    "film",
    "john",
    "smith",
    "lives",
    "in",
    "paris",
    "works",
    "at",
    "acme",
    "corp",
    ".",
    ",",
    "?",
    "!",
    "what",
    "where",
    "who",
    "when",
    "did",
    "does",
    "play",
    "plays",
    "played",
    "by",
    "for",
    "of",
    "and",
    "or",
    "not",
    "very",
]
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *_WORDS,
    *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
    *list("abcdefghijklmnopqrstuvwxyz0123456789"),
]

TASK_HEADS = {
    "sst2": ("BertForSequenceClassification", ["negative", "positive"]),
    "ner": (
        "BertForTokenClassification",
        ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"],
    ),
    "qa": ("BertForQuestionAnswering", None),
}
CHECKPOINT_NAMES = {"sst2": "minilm-l6-sst2", "ner": "minilm-l6-conll03", "qa": "minilm-l6-squad"}


def tiny_config(task: str, layers: int = 2, hidden: int = 48, heads: int = 4) -> transformers.BertConfig:
    architecture, labels = TASK_HEADS[task]
    kwargs = {}
    if labels:
        kwargs = {"id2label": dict(enumerate(labels)), "label2id": {lab: i for i, lab in enumerate(labels)}}
    return transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=128,
        architectures=[architecture],
        **kwargs,
    )


def make_tiny_checkpoint(directory: Path, task: str, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random task model and its tokenizer as a normal Hugging Face folder."""
    torch.manual_seed(seed)
    config = tiny_config(task, layers=layers)
    model = getattr(transformers, config.architectures[0])(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {task: make_tiny_checkpoint(root / name, task) for task, name in CHECKPOINT_NAMES.items()}


def write_tiny_data(root: Path) -> Path:
    """Small files in each task's standard format, laid out like ../shared/data."""
    (root / "sst2").mkdir(parents=True, exist_ok=True)
    sentences = ["a good movie", "a terrible film", "john plays very good", "what a bad movie !"] * 3
    rows = "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences))
    (root / "sst2" / "dev.tsv").write_text("sentence\tlabel\n" + rows)
    (root / "sst2" / "train.tsv").write_text("sentence\tlabel\n" + rows * 4)
    (root / "conll2003").mkdir(exist_ok=True)
    conll = "-DOCSTART- -X- -X- O\n\nJohn NNP B-NP I-PER\nSmith NNP I-NP I-PER\nlives VBZ B-VP O\nin IN B-PP O\n"
    conll += "Paris NNP B-NP I-LOC\n. . O O\n\nAcme NNP B-NP I-ORG\ncorp NNP I-NP I-ORG\n. . O O\n"
    (root / "conll2003" / "eng.testa").write_text(conll)
    (root / "conll2003" / "eng.train").write_text(conll * 20)
    (root / "squad").mkdir(exist_ok=True)
    context = "john smith lives in paris . he works at acme corp . " * 3
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": f"t{i}",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": f"q{i}",
                                "question": "where does john live ?",
                                "answers": [{"text": "paris", "answer_start": context.index("paris")}],
                            }
                        ],
                    }
                ],
            }
            for i in range(40)  # the catalog evaluates articles [36, 48)
        ],
    }
    import json

    (root / "squad" / "dev-v1.1.json").write_text(json.dumps(squad))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


FOLDER_MARKERS = {"tests/unit/": "unit", "tests/integration/": "integration", "tests/slow/": "slow"}


def pytest_configure(config: pytest.Config) -> None:
    # A developer's own models (`qbert add`) stay out of the tests' catalog; tests that add models name their own.
    os.environ["QBERT_USER_CATALOG"] = str(Path(config.rootpath) / ".pytest_cache" / "no-user-catalog.toml")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers follow folders: `-m unit` runs the fast in-process tests, `-m "not slow"` skips the baselines."""
    for item in items:
        path = str(item.fspath).replace(os.sep, "/")
        for folder, marker in FOLDER_MARKERS.items():
            if folder in path:
                item.add_marker(getattr(pytest.mark, marker))


def tiny_entry(task: str, checkpoint_dir: Path, data: Path):  # noqa: ANN201 — a catalog TaskEntry
    """The catalog's entry for `task` (file layout, QA articles, training recipe) over the tiny data and checkpoint."""
    from quantization.catalog import data_dir, load_catalog

    entry = load_catalog().task(task)
    return dataclasses.replace(
        entry,
        checkpoint=str(checkpoint_dir),
        data=data / entry.data.relative_to(data_dir()),
        train_data=data / entry.train_data.relative_to(data_dir()),
    )


def build_tiny_artifact(tmp_path: Path, checkpoint_dir: Path, task: str, precision: str) -> Path:
    """One tiny checkpoint quantized at a catalog precision into `tmp_path/<task>/<precision>/` (not evaluated)."""
    from quantization.build import build_artifact, load_checkpoint
    from quantization.catalog import load_catalog

    checkpoint = load_checkpoint(str(checkpoint_dir), task)
    out = tmp_path / task / precision
    data = write_tiny_data(tmp_path / "data")  # GPTQ precisions calibrate on the training split
    build_artifact(
        checkpoint, tiny_entry(task, checkpoint_dir, data), load_catalog().precision_for(task, precision), out
    )
    return out


def build_tiny_artifacts(
    root: Path, checkpoints: dict[str, Path], data: Path, precisions: tuple[str, ...] = ("fp32", "w8", "w2g128")
) -> Path:
    """Quantize and evaluate the tiny checkpoints at `precisions` into `root/<task>/<precision>/`."""
    from quantization.build import build_artifact, evaluate_artifact, load_checkpoint
    from quantization.catalog import load_catalog

    catalog = load_catalog()
    for task, directory in checkpoints.items():
        checkpoint = load_checkpoint(str(directory), task)
        entry = tiny_entry(task, directory, data)
        for precision in precisions:
            out = root / task / precision
            build_artifact(checkpoint, entry, catalog.precision_for(task, precision), out)
            evaluate_artifact(out, entry, latency_samples=2)
    return root


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_checkpoints: dict, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_artifacts(tmp_path_factory.mktemp("artifacts"), tiny_checkpoints, tiny_data)
