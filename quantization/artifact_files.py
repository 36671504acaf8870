"""The names of an artifact's files: importable without torch (the API process finds artifacts by them)."""

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MODEL_CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
