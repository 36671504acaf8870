"""The kinds of task a model may serve, by name (each kind is one module under `quantization/tasks/`).

Torch-free, so that the API process and the catalog can check an entry's kind without importing the tasks' code."""

KINDS = ("sequence-classification", "token-classification", "question-answering")
KIND_OPTIONS: dict[str, frozenset[str]] = {"sequence-classification": frozenset({"columns", "problem_type"})}
BUILT_IN_KINDS = {"sst2": "sequence-classification", "ner": "token-classification", "qa": "question-answering"}
