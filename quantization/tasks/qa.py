"""SQuAD v1.1 extractive QA: strided windows over long contexts, EM / F1 with the official
normalization (lower case, no punctuation, no articles, single spaces)."""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quantization.tasks.base import Example, Feature, Kind, Task, TensorSpec, TextToCheck, without_options
from quantization.tasks.schemas import Answered, StrictRequest

WINDOW_STRIDE = 128  # tokens shared by consecutive windows
MAX_ANSWER_TOKENS = 30
N_BEST = 20


@dataclass(frozen=True)
class QAInput:
    question: str
    context: str


@dataclass(frozen=True)
class QAPrediction:
    answer: str
    start: int  # character offsets into the context
    end: int
    score: float


# ----- HTTP schemas -----------------------------------------------------------------------------------------------


class QARequest(StrictRequest):
    question: str
    context: str

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "question": "Where does John live?",
                    "context": "John Smith lives in Paris, where he works for Acme Corp.",
                }
            ]
        },
    )


class QAResponse(Answered):
    answer: str
    start: int = Field(description="character offset into the context (0 with an empty answer)")
    end: int
    score: float = Field(description="probability of the span: p(start) · p(end) in its window")


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def read_squad(path: Path, articles: tuple[int, int] | None = None) -> list[Example[QAInput]]:
    """Questions of a SQuAD v1.1 JSON file, optionally of articles [first, last) only."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: not a SQuAD JSON file (no `data` list)")
    chosen = data["data"] if articles is None else data["data"][articles[0] : articles[1]]
    return [
        Example(QAInput(qa["question"], paragraph["context"]), [a["text"] for a in qa["answers"]])
        for article in chosen
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


@dataclass(frozen=True)
class AnswerSpan:
    text: str
    start: int  # character offset into the context

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def read_squad_answers(path: Path, articles: tuple[int, int] | None = None) -> list[Example[QAInput]]:
    """Questions with their first gold answer's character span (`AnswerSpan`), for training."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    chosen = data["data"] if articles is None else data["data"][articles[0] : articles[1]]
    examples = []
    for article in chosen:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]
                span = AnswerSpan(answer["text"], int(answer["answer_start"]))
                if context[span.start : span.end] != span.text:
                    raise ValueError(f"{path}: question {qa.get('id')}: answer_start does not point at the answer")
                examples.append(Example(QAInput(qa["question"], context), span))
    return examples


class QATask(Task[QAInput, QAPrediction]):
    kind = "question-answering"
    metrics = ("exact_match", "f1")
    primary_metric = "f1"
    architecture_suffix = "ForQuestionAnswering"
    max_length = 384  # long contexts run in strided windows of this many tokens
    accepts_batches = False
    samples = (("Where does John live?", "John Smith lives in Paris, where he works for Acme Corp as an engineer."),)

    def __init__(self, name: str = "qa", description: str = "") -> None:
        self.name = name
        self.description = description

    @property
    def route(self) -> str:
        return "/qa" if self.name == "qa" else super().route  # the first QA model's route predates the others'

    # ----- HTTP and V2 ----------------------------------------------------------------------------------------

    @property
    def summary(self) -> str:
        return self.description or f"{self.name}: answer span from a context"

    def request_model(self) -> type[BaseModel]:
        return QARequest

    def response_model(self) -> Any:
        return QAResponse

    def request_payloads(self, body: Any) -> list[Any]:
        return [(body.question, body.context)]

    def request_texts(self, body: Any) -> list[TextToCheck]:
        return [TextToCheck("question", body.question, "question"), TextToCheck("context", body.context, "context")]

    def response(self, answered_by: dict[str, str], body: Any, predictions: Sequence[QAPrediction]) -> BaseModel:
        (p,) = predictions
        return QAResponse(**answered_by, answer=p.answer, start=p.start, end=p.end, score=p.score)

    def v2_inputs(self) -> list[TensorSpec]:
        return [TensorSpec("question", "BYTES", (-1,)), TensorSpec("context", "BYTES", (-1,))]

    def v2_outputs(self, labels: int) -> list[TensorSpec]:
        return [
            TensorSpec("answer", "BYTES", (-1,)),
            TensorSpec("start", "INT64", (-1,)),
            TensorSpec("end", "INT64", (-1,)),
            TensorSpec("score", "FP32", (-1,)),
        ]

    def v2_payloads(self, inputs: dict[str, list[str]]) -> list[Any]:
        return list(zip(inputs["question"], inputs["context"], strict=True))

    def v2_columns(self, labels: list[str], predictions: Sequence[QAPrediction]) -> dict[str, list[Any]]:
        return {
            "answer": [p.answer for p in predictions],
            "start": [p.start for p in predictions],
            "end": [p.end for p in predictions],
            "score": [p.score for p in predictions],
        }

    def input_from_payload(self, payload: Any) -> QAInput:
        question, context = payload
        return QAInput(question, context)

    def payload_of(self, item: QAInput) -> tuple[str, str]:
        return (item.question, item.context)

    def request_body(self, payload: Any) -> dict[str, Any]:
        question, context = payload
        return {"question": question, "context": context}

    def read_examples(self, path: Path, articles: tuple[int, int] | None = None) -> list[Example[QAInput]]:
        return read_squad(path, articles)

    def preprocess(self, tokenizer: Any, item: QAInput, max_length: int) -> list[Feature]:
        question_tokens = len(tokenizer(item.question, add_special_tokens=False)["input_ids"])
        if question_tokens > max_length // 2:
            raise ValueError(f"question is {question_tokens} tokens; at most {max_length // 2} fit a window")
        encoded = tokenizer(
            item.question,
            item.context,
            truncation="only_second",
            max_length=max_length,
            stride=min(WINDOW_STRIDE, max_length // 4),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        features = []
        for window in range(len(encoded["input_ids"])):
            sequence_ids = encoded.sequence_ids(window)
            offsets = [
                tuple(span) if sequence_ids[i] == 1 else None
                for i, span in enumerate(encoded["offset_mapping"][window])
            ]
            ids = encoded["input_ids"][window]
            # RoBERTa's and DistilBERT's tokenizers give no token types; the sequence ids above mark the context
            token_types = encoded["token_type_ids"][window] if "token_type_ids" in encoded else [0] * len(ids)
            features.append(Feature(ids, token_types, {"offsets": offsets}))
        return features

    def read_training_examples(self, path: Path, **options: Any) -> list[Example[QAInput]]:
        return read_squad_answers(path, options.get("articles"))

    def training_features(
        self, tokenizer: Any, example: Example[QAInput], max_length: int, label2id: dict[str, int]
    ) -> list[Feature]:
        """Every window; the answer's first and last token where the window holds all of it, else [CLS] (0)."""
        span: AnswerSpan = example.gold
        features = self.preprocess(tokenizer, example.input, max_length)
        for feature in features:
            start = end = 0
            tokens = [(i, o) for i, o in enumerate(feature.meta["offsets"]) if o is not None]
            if tokens and tokens[0][1][0] <= span.start and span.end <= tokens[-1][1][1]:
                start = next(i for i, (s, e) in tokens if e > span.start)
                end = next(i for i, (s, e) in reversed(tokens) if s < span.end)
            feature.meta["targets"] = {"start_positions": start, "end_positions": end}
        return features

    def split_outputs(self, outputs: Any, features: Sequence[Feature]) -> list[Any]:
        return [
            (start[: len(f)].float(), end[: len(f)].float())
            for start, end, f in zip(outputs.start_logits, outputs.end_logits, features, strict=True)
        ]

    def postprocess(
        self, item: QAInput, features: Sequence[Feature], outputs: Sequence[Any], labels: list[str]
    ) -> QAPrediction:
        import torch  # here, not at the top: the API process reads this module's schemas without torch

        best: tuple[float, int, int, float] | None = None  # (logit sum, char start, char end, probability)
        for feature, (start_logits, end_logits) in zip(features, outputs, strict=True):
            offsets = feature.meta["offsets"]
            start_probs, end_probs = torch.softmax(start_logits, -1), torch.softmax(end_logits, -1)
            starts = torch.topk(start_logits, min(N_BEST, len(offsets))).indices.tolist()
            ends = torch.topk(end_logits, min(N_BEST, len(offsets))).indices.tolist()
            for s in starts:
                for e in ends:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                        continue
                    logit = float(start_logits[s] + end_logits[e])
                    if best is None or logit > best[0]:
                        best = (logit, offsets[s][0], offsets[e][1], float(start_probs[s] * end_probs[e]))
        if best is None:
            return QAPrediction("", 0, 0, 0.0)
        _, start, end, prob = best
        return QAPrediction(item.context[start:end], start, end, prob)

    def score(self, examples: Sequence[Example[QAInput]], predictions: Sequence[QAPrediction]) -> dict[str, float]:
        em = sum(max(exact_match(p.answer, g) for g in ex.gold) for ex, p in zip(examples, predictions, strict=True))
        f1 = sum(max(f1_score(p.answer, g) for g in ex.gold) for ex, p in zip(examples, predictions, strict=True))
        return {"exact_match": em / len(examples), "f1": f1 / len(examples)}


def _squad() -> QATask:
    return QATask("qa", description="Extractive answer span from a context")


KIND = Kind("question-answering", without_options("question-answering", QATask), built_in=(_squad,))
