"""CoNLL-2003 named entities: column files in IOB1 (converted to IOB2), entity-level micro F1.

The F1 follows seqeval's default (conlleval-style) chunking, so an `I-X` after `O` starts an
entity, exactly as seqeval scores it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quantization.tasks.base import IGNORE_INDEX, Example, Feature, Kind, Task, TensorSpec, TextToCheck, without_options
from quantization.tasks.schemas import Answered, TextsRequest

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class NerInput:
    """Words with their character spans in `text` (the eval path joins words with spaces)."""

    words: list[str]
    spans: list[tuple[int, int]]
    text: str

    @classmethod
    def from_text(cls, text: str) -> NerInput:
        """Split raw text into words the way BERT's basic tokenizer does (words and punctuation)."""
        matches = list(_WORD.finditer(text))
        return cls([m.group() for m in matches], [m.span() for m in matches], text)

    @classmethod
    def from_words(cls, words: list[str]) -> NerInput:
        spans, pos = [], 0
        for word in words:
            spans.append((pos, pos + len(word)))
            pos += len(word) + 1
        return cls(list(words), spans, " ".join(words))


@dataclass(frozen=True)
class Entity:
    type: str
    text: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class NerPrediction:
    tags: list[str]
    entities: list[Entity] = field(default_factory=list)


# ----- HTTP schemas -----------------------------------------------------------------------------------------------


class NERRequest(TextsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "John Smith works for Acme Corp in Paris."},
                {"texts": ["John Smith works for Acme Corp.", "EU rejects German call to boycott British lamb."]},
            ]
        },
    )


class EntityResult(BaseModel):
    type: str
    text: str
    start: int = Field(description="character offset into the input text")
    end: int = Field(description="character offset one past the entity's last character")
    score: float


class NERResponse(Answered):
    """The answer to `{"text": ...}`."""

    entities: list[EntityResult]


class NERTextResult(BaseModel):
    entities: list[EntityResult]


class NERBatchResponse(Answered):
    """The answer to `{"texts": [...]}`: one result per text, in order."""

    results: list[NERTextResult]


ENTITY_FIELDS = ("type", "text", "start", "end", "score")


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 (B- only between two adjacent entities of one type) to IOB2 (B- starts every entity)."""
    out: list[str] = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = out[i - 1] if i else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, _, type_ = tag.partition("-")
    return prefix, type_


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of every chunk, seqeval's default scheme."""
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag_str in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(tag_str)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    true_set = {(i, *e) for i, tags in enumerate(gold) for e in get_entities(tags)}
    pred_set = {(i, *e) for i, tags in enumerate(predicted) for e in get_entities(tags)}
    correct = len(true_set & pred_set)
    precision = correct / len(pred_set) if pred_set else 0.0
    recall = correct / len(true_set) if true_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "precision": precision, "recall": recall}


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL column file (word first, NER tag last), -DOCSTART- lines skipped."""
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        columns = line.split()
        if len(columns) < 2:
            raise ValueError(f"{path}: expected `word ... tag` columns, got {line!r}")
        words.append(columns[0])
        tags.append(columns[-1])
    if words:
        sentences.append((words, tags))
    return sentences


class NERTask(Task[NerInput, NerPrediction]):
    kind = "token-classification"
    metrics = ("entity_f1",)
    primary_metric = "entity_f1"
    architecture_suffix = "ForTokenClassification"
    samples = ("John Smith works for Acme Corp in Paris .", "EU rejects German call to boycott British lamb .")

    def __init__(self, name: str = "ner", description: str = "") -> None:
        self.name = name
        self.description = description

    # ----- HTTP and V2 ----------------------------------------------------------------------------------------

    @property
    def summary(self) -> str:
        return self.description or f"{self.name}: entities"

    def request_model(self) -> type[BaseModel]:
        return NERRequest

    def response_model(self) -> Any:
        return NERResponse | NERBatchResponse

    def request_payloads(self, body: Any) -> list[Any]:
        return body.all_texts()

    def request_texts(self, body: Any) -> list[TextToCheck]:
        return [TextToCheck(body.where(i), text, "texts") for i, text in enumerate(body.all_texts())]

    def response(self, answered_by: dict[str, str], body: Any, predictions: Sequence[NerPrediction]) -> BaseModel:
        found = [[EntityResult.model_validate(e, from_attributes=True) for e in p.entities] for p in predictions]
        if body.text is not None:
            return NERResponse(**answered_by, entities=found[0])
        return NERBatchResponse(**answered_by, results=[NERTextResult(entities=entities) for entities in found])

    def v2_inputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", (-1,))]

    def v2_outputs(self, labels: int) -> list[TensorSpec]:
        return [TensorSpec("entities", "BYTES", (-1,))]  # each row: a JSON array of {type, text, start, end, score}

    def v2_payloads(self, inputs: dict[str, list[str]]) -> list[Any]:
        return list(inputs["text"])

    def v2_columns(self, labels: list[str], predictions: Sequence[NerPrediction]) -> dict[str, list[Any]]:
        rows = [[{f: getattr(e, f) for f in ENTITY_FIELDS} for e in p.entities] for p in predictions]
        return {"entities": [json.dumps(row) for row in rows]}

    def check_labels(self, examples: Sequence[Example[NerInput]], labels: Sequence[str]) -> None:
        """The data's entity types among the model's, whether the model tags IOB1 or IOB2."""
        types = {tag.partition("-")[2] for example in examples for tag in example.gold if tag != "O"}
        missing = sorted(types - {label.partition("-")[2] for label in labels if label != "O"})
        if missing:
            raise ValueError(f"entity types {missing} are not among the model's labels {list(labels)}")

    def input_from_payload(self, payload: Any) -> NerInput:
        return NerInput.from_text(payload)

    def payload_of(self, item: NerInput) -> str:
        return item.text

    def read_examples(self, path: Path) -> list[Example[NerInput]]:
        return [Example(NerInput.from_words(w), iob1_to_iob2(t)) for w, t in read_conll(path)]

    def preprocess(self, tokenizer: Any, item: NerInput, max_length: int) -> list[Feature]:
        """One window of the model's length, or for a longer text windows that overlap by a quarter of it (the words
        sub-token-split at a window's edge are whole in its neighbour); `postprocess` tags each word from the window
        where it has the most context on both sides."""
        if not item.words:
            return [Feature([tokenizer.cls_token_id, tokenizer.sep_token_id], [0, 0], {"word_ids": [None, None]})]
        encoded = tokenizer(
            item.words,
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            stride=max_length // 4,
            return_overflowing_tokens=True,
        )
        features = []
        for window, ids in enumerate(encoded["input_ids"]):
            # RoBERTa's and DistilBERT's tokenizers give no token types
            token_types = encoded["token_type_ids"][window] if "token_type_ids" in encoded else [0] * len(ids)
            features.append(Feature(ids, token_types, {"word_ids": encoded.word_ids(window)}))
        return features

    def training_features(
        self, tokenizer: Any, example: Example[NerInput], max_length: int, label2id: dict[str, int]
    ) -> list[Feature]:
        """The word's tag on its first sub-token (what `postprocess` reads), no loss elsewhere; every window."""
        unknown = sorted(set(example.gold) - set(label2id))
        if unknown:
            raise ValueError(f"tags {unknown} are not labels of the model ({sorted(label2id)})")
        features = self.preprocess(tokenizer, example.input, max_length)
        for feature in features:
            targets, seen = [], set()
            for word in feature.meta["word_ids"]:
                if word is None or word in seen:
                    targets.append(IGNORE_INDEX)
                else:
                    seen.add(word)
                    targets.append(label2id[example.gold[word]])
            feature.meta["targets"] = {"labels": targets}
        return features

    def untruncated_length(self, tokenizer: Any, item: NerInput) -> int | None:
        return None  # long texts run in overlapping windows: never truncated

    def refuses_long_input(self, payload: Any) -> bool:
        return False

    def split_outputs(self, outputs: Any, features: Sequence[Feature]) -> list[Any]:
        return [logits[: len(f)].float() for logits, f in zip(outputs.logits, features, strict=True)]

    def postprocess(
        self, item: NerInput, features: Sequence[Feature], outputs: Sequence[Any], labels: list[str]
    ) -> NerPrediction:
        tags = ["O"] * len(item.words)
        word_prob = [1.0] * len(item.words)
        context = [-1] * len(item.words)  # the context the word's tag was read with: the larger, the better
        import torch  # here, not at the top: the API process reads this module's schemas without torch

        for feature, logits in zip(features, outputs, strict=True):
            best_prob, best = torch.softmax(logits, dim=-1).max(dim=-1)
            word_ids = feature.meta["word_ids"]
            positions = [i for i, word in enumerate(word_ids) if word is not None]
            first, last = positions[0] if positions else 0, positions[-1] if positions else 0
            seen: set[int] = set()
            for position, word in enumerate(word_ids):
                if word is None or word in seen:  # the first sub-token labels the word
                    continue
                seen.add(word)
                room = min(position - first, last - position)
                if room > context[word]:  # the window where the word sits furthest from an edge tags it, once
                    context[word] = room
                    tags[word] = labels[int(best[position])]
                    word_prob[word] = float(best_prob[position])
        entities = []
        for type_, first_word, last_word in get_entities(tags):
            start, end = item.spans[first_word][0], item.spans[last_word][1]
            score = sum(word_prob[first_word : last_word + 1]) / (last_word - first_word + 1)
            entities.append(Entity(type_, item.text[start:end], start, end, score))
        return NerPrediction(tags, entities)

    def score(self, examples: Sequence[Example[NerInput]], predictions: Sequence[NerPrediction]) -> dict[str, float]:
        return entity_f1([ex.gold for ex in examples], [p.tags for p in predictions])


def _conll() -> NERTask:
    return NERTask("ner", description="Named entities with character offsets")


KIND = Kind("token-classification", without_options("token-classification", NERTask), built_in=(_conll,))
