"""Tiny random checkpoints of every served encoder family, saved as normal Hugging Face folders with the family's
own tokenizer kind: WordPiece (BERT, DistilBERT, ELECTRA) or byte-level BPE (RoBERTa), trained here on a few words."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from tests.conftest import _WORDS, VOCAB

ARCHITECTURES = ("bert", "roberta", "distilbert", "electra")
HEADS = {
    "sequence-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
    "question-answering": "ForQuestionAnswering",
}
PREFIX = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "electra": "Electra"}
WINDOW = 64  # max_position_embeddings: long inputs are easy to make


def _config(architecture: str, vocab_size: int, labels: list[str] | None, head: str) -> transformers.PretrainedConfig:
    names = {"architectures": [f"{PREFIX[architecture]}{head}"]}
    if labels:
        names |= {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    if architecture == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=vocab_size,
            dim=48,
            n_layers=2,
            n_heads=4,
            hidden_dim=192,
            max_position_embeddings=WINDOW,
            **names,
        )
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 192,
        **names,
    }
    if architecture == "roberta":
        # RoBERTa's positions start after the padding index (1): two more than the longest input
        return transformers.RobertaConfig(
            max_position_embeddings=WINDOW + 2, pad_token_id=1, type_vocab_size=1, **common
        )
    if architecture == "electra":
        return transformers.ElectraConfig(embedding_size=32, max_position_embeddings=WINDOW, **common)
    return transformers.BertConfig(max_position_embeddings=WINDOW, **common)


def _tokenizer(architecture: str, directory: Path) -> transformers.PreTrainedTokenizerBase:
    if architecture == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        corpus = [" ".join(_WORDS)] * 4 + ["John Smith lives in Paris and works at Acme Corp."]
        bpe.train_from_iterator(
            corpus, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        )
        bpe.save_model(str(directory))
        return transformers.RobertaTokenizerFast(
            vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"), model_max_length=WINDOW
        )
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tokenizer_class = {"distilbert": transformers.DistilBertTokenizerFast, "electra": transformers.ElectraTokenizerFast}
    return tokenizer_class.get(architecture, transformers.BertTokenizerFast)(
        vocab_file=str(vocab), do_lower_case=True, model_max_length=WINDOW
    )


def make_checkpoint(
    directory: Path,
    architecture: str,
    kind: str,
    labels: list[str] | None = None,
    problem_type: str | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random `architecture` model with `kind`'s head and its tokenizer, saved in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(architecture, directory)
    config = _config(architecture, len(tokenizer), labels, HEADS[kind])
    if problem_type:
        config.problem_type = problem_type
    torch.manual_seed(seed)
    getattr(transformers, config.architectures[0])(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
