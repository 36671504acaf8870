"""The names of an artifact's files: importable without torch (the API process finds artifacts by them)."""

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "config.json"
# Whichever of these the checkpoint has: WordPiece (BERT, DistilBERT, ELECTRA), byte-level BPE (RoBERTa),
# SentencePiece (XLM-RoBERTa), and the fast tokenizer's own file that covers them all.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)
