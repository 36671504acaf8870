"""The task contract shared by offline evaluation and the service.

A task turns one input into one or more model features (`preprocess`), and the model's outputs
for those features back into one prediction (`postprocess`). Evaluation and serving call the
same two functions, so a served answer equals the evaluated answer for the same input.

Each kind of task is one module of this package that defines `KIND` (a `Kind`): the service, the catalog, `qbert
add`, evaluation and the load test read a kind's facts from its task, never from its name. The modules import torch
only inside the functions that compute with it, so the API process (which reads the HTTP shapes and unpickles the
predictions) never loads it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from pydantic import BaseModel

InputT = TypeVar("InputT")
PredictionT = TypeVar("PredictionT")


@dataclass
class Feature:
    """One model input sequence; `meta` carries what the task's postprocess needs back."""

    input_ids: list[int]
    token_type_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Example(Generic[InputT]):
    """An evaluation example: the task input and its gold answer."""

    input: InputT
    gold: Any


@dataclass(frozen=True)
class TensorSpec:
    """A V2 (Open Inference Protocol) input or output tensor."""

    name: str
    datatype: str  # "BYTES", "FP32", "INT64"
    shape: tuple[int, ...]  # -1: any size (the batch)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class TextToCheck(NamedTuple):
    """A text of a request that the service checks (not blank, within its field's length limit) before running."""

    where: str  # how an error names it: `text`, `texts[3]`, `context`
    text: str
    field: str  # the request schema's field, whose limits apply


@dataclass(frozen=True)
class Kind:
    """A kind of task, as its module declares it (`KIND`)."""

    name: str  # e.g. "sequence-classification"
    make_task: Callable[[str, dict[str, Any]], Task]  # (model name, catalog options) -> its task
    options: frozenset[str] = frozenset()  # what a catalog entry's `options` table may set
    # (checkpoint config, options a user chose) -> the entry's options (e.g. a classifier's problem type from config)
    entry_options: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    built_in: tuple[Callable[[], Task], ...] = ()  # the tasks served by name without a kind in the catalog


def without_options(kind: str, make: Callable[[str], Task]) -> Callable[[str, dict[str, Any]], Task]:
    """`Kind.make_task` for a kind whose catalog entries set no options: `make(name)`, any option refused."""

    def make_task(name: str, options: dict[str, Any]) -> Task:
        if options:
            raise ValueError(f"task {name!r}: the {kind} kind takes no options, got {sorted(options)}")
        return make(name)

    return make_task


class Task(ABC, Generic[InputT, PredictionT]):
    """A task: data reading, pre/post-processing and its metric.

    Each kind of task (sequence classification, token classification, question answering) owns every fact about
    itself that the service, evaluation, the load test and the reports need: what is read from this class, never
    decided elsewhere by the task's name.
    """

    name: str
    kind: str  # its `Kind`'s name
    metrics: tuple[str, ...]
    primary_metric: str  # the one metric reports and accuracy targets use
    architecture_suffix: str  # e.g. "ForSequenceClassification"
    max_length: int = 512  # tokens per model sequence, capped by the model's position embeddings
    accepts_batches: bool = True  # whether a request may carry several inputs (`{"texts": [...]}`)
    samples: tuple[Any, ...] = ()  # request payloads a load test may send where no evaluation data is at hand

    @property
    def route(self) -> str:
        """The HTTP route that predicts with this task's models."""
        return f"/predict/{self.name}"

    def input_from_payload(self, payload: Any) -> InputT:
        """The task's input from a request payload (what `payload_of` and the HTTP routes produce)."""
        return payload

    def payload_of(self, item: InputT) -> Any:
        """The request payload that carries `item` (the inverse of `input_from_payload`)."""
        return item

    def request_body(self, payload: Any) -> dict[str, Any]:
        """The JSON body of a request for one payload."""
        return {"text": payload}

    def refuses_long_input(self, payload: Any) -> bool:
        """Whether an input longer than the model's window is refused (422) rather than cut to it."""
        return True

    # ----- the HTTP API: `POST route`'s schemas and codec (the service knows nothing else of a kind) -------------

    @property
    def summary(self) -> str:
        """The route's one-line description in the API's documentation."""
        return f"{self.name}: predict"

    @abstractmethod
    def request_model(self) -> type[BaseModel]:
        """The route's request body."""

    @abstractmethod
    def response_model(self) -> Any:
        """The route's response: a model, or a union of models."""

    @abstractmethod
    def request_payloads(self, body: Any) -> list[Any]:
        """The payloads (one per input, each for `input_from_payload`) of a validated request body."""

    @abstractmethod
    def request_texts(self, body: Any) -> list[TextToCheck]:
        """Every text of the body, for the service's blank and length checks."""

    @abstractmethod
    def response(self, answered_by: dict[str, str], body: Any, predictions: Sequence[PredictionT]) -> BaseModel:
        """The route's answer: `answered_by` (task, precision, model) and the body's predictions, in order."""

    # ----- the V2 (Open Inference) protocol: BYTES inputs batched along the first dimension ---------------------

    @abstractmethod
    def v2_inputs(self) -> list[TensorSpec]:
        """The BYTES tensors a V2 inference request carries."""

    @abstractmethod
    def v2_outputs(self, labels: int) -> list[TensorSpec]:
        """The tensors a V2 response carries, for a model with `labels` labels (-1: not known yet)."""

    @abstractmethod
    def v2_payloads(self, inputs: dict[str, list[str]]) -> list[Any]:
        """One payload per batch row, from the request's inputs by name (checked against `v2_inputs`)."""

    @abstractmethod
    def v2_columns(self, labels: list[str], predictions: Sequence[PredictionT]) -> dict[str, list[Any]]:
        """Each output tensor's rows."""

    # ----- data, features and outputs ---------------------------------------------------------------------------

    def check_labels(self, examples: Sequence[Example[InputT]], labels: Sequence[str]) -> None:
        """Raise ValueError naming the first gold answer that the model's `labels` cannot give (`qbert add`)."""

    @abstractmethod
    def read_examples(self, path: Path) -> list[Example[InputT]]:
        """Examples from a file in the task's standard format."""

    @abstractmethod
    def preprocess(self, tokenizer: Any, item: InputT, max_length: int) -> list[Feature]:
        """Model features for one input."""

    @abstractmethod
    def split_outputs(self, outputs: Any, features: Sequence[Feature]) -> list[Any]:
        """Per-feature outputs (unpadded) from one batched forward pass."""

    @abstractmethod
    def postprocess(
        self, item: InputT, features: Sequence[Feature], outputs: Sequence[Any], labels: list[str]
    ) -> PredictionT:
        """One prediction from the outputs of the input's features."""

    @abstractmethod
    def score(self, examples: Sequence[Example[InputT]], predictions: Sequence[PredictionT]) -> dict[str, float]:
        """Metric name -> value in [0, 1]."""

    def untruncated_length(self, tokenizer: Any, item: InputT) -> int | None:
        """Tokens of `item` as one sequence without truncation; None where the task never truncates
        (QA covers long contexts with windows)."""
        return None

    def split_name(self, path: Path, n: int) -> str:
        return f"{path.name} ({n} examples)"

    def read_training_examples(self, path: Path, **options: Any) -> list[Example[InputT]]:
        """Examples with what training needs in `gold` (by default what evaluation reads)."""
        return self.read_examples(path, **options)

    @abstractmethod
    def training_features(
        self, tokenizer: Any, example: Example[InputT], max_length: int, label2id: dict[str, int]
    ) -> list[Feature]:
        """Features whose `meta["targets"]` hold the model's training targets by keyword (e.g. `labels`): an int
        per sequence, a float (regression) or tuple of floats (multi-label) per sequence, or a list with one int per
        token (-100 where no loss is taken)."""


IGNORE_INDEX = -100  # positions no loss is taken on (transformers' convention)
