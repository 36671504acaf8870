"""Request and response models of the HTTP API (they generate the OpenAPI schema and its examples)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsRequest(_Request):
    """One text, or several answered in order (one HTTP round trip for a whole batch)."""

    # Absent means None; an explicit null is invalid (the default is not validated), as the schema says
    text: str = Field(None, description="one text")  # type: ignore[assignment]
    texts: list[str] = Field(None, description="several texts, answered in order")  # type: ignore[arg-type]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema = handler.resolve_ref_schema(schema)
        schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]  # exactly one, as validated below
        return schema

    @model_validator(mode="after")
    def _exactly_one(self) -> TextsRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class SST2Request(TextsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "a gripping, beautifully acted film"}, {"texts": ["great", "dull"]}]},
    )


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


class ClassifyRequest(TextsRequest):
    """A text classifier of the user's own: one text, or several answered in order."""

    truncation: Literal["truncate", "error"] = Field(
        "truncate",
        description="an input longer than the model's window: cut to it (the result says `truncated`), or refused "
        "with 422",
    )

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "book a table for two tonight"}]}
    )

    def all_pairs(self) -> list[str] | None:
        """Each text's second text (None: single texts)."""
        return None


class PairClassifyRequest(ClassifyRequest):
    """A text-pair classifier of the user's own (NLI, paraphrase, similarity): each text with its second text."""

    text_pair: str = Field(None, description="with `text`: its second text")  # type: ignore[assignment]
    text_pairs: list[str] = Field(
        None,  # type: ignore[arg-type]
        description="with `texts`: each text's second text, in order",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "A man is playing a guitar.", "text_pair": "Someone plays music."}]},
    )

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema = handler.resolve_ref_schema(schema)
        schema["oneOf"] = [{"required": ["text", "text_pair"]}, {"required": ["texts", "text_pairs"]}]
        return schema

    @model_validator(mode="after")
    def _pairs_match_texts(self) -> PairClassifyRequest:
        if self.text is not None and self.text_pair is None:
            raise ValueError("a pair model reads two texts: give `text_pair` with `text`")
        if self.texts is not None and (self.text_pairs is None or len(self.text_pairs) != len(self.texts)):
            raise ValueError("a pair model reads two texts: give `text_pairs` with `texts`, one for each")
        if (self.text_pair is not None and self.text is None) or (self.text_pairs is not None and self.texts is None):
            raise ValueError("`text_pair` goes with `text`, `text_pairs` with `texts`")
        return self

    def all_pairs(self) -> list[str] | None:
        return [self.text_pair] if self.text_pair is not None else list(self.text_pairs or [])


class QARequest(_Request):
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


class _Response(BaseModel):
    task: str
    precision: str
    model: str = Field(description="checkpoint name @ the first 12 hex digits of the artifact's weights sha256")


class ClassResult(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class SST2Response(_Response):
    results: list[ClassResult]


class ClassifyResult(BaseModel):
    label: str | None = Field(description="the most probable label; null for a regression model")
    score: float = Field(description="the label's probability, or a regression model's output")
    scores: dict[str, float] = Field(description="every label's probability (sigmoid each for multi-label)")
    labels: list[str] | None = Field(
        None, description="multi-label models: every label whose probability reaches 0.5, most probable first"
    )
    truncated: bool = Field(description="the input was longer than the model's window and was cut to it")


class ClassifyResponse(_Response):
    results: list[ClassifyResult]


class EntityResult(BaseModel):
    type: str
    text: str
    start: int = Field(description="character offset into the input text")
    end: int = Field(description="character offset one past the entity's last character")
    score: float


class NERResponse(_Response):
    """The answer to `{"text": ...}`."""

    entities: list[EntityResult]


class NERTextResult(BaseModel):
    entities: list[EntityResult]


class NERBatchResponse(_Response):
    """The answer to `{"texts": [...]}`: one result per text, in order."""

    results: list[NERTextResult]


class QAResponse(_Response):
    answer: str
    start: int = Field(description="character offset into the context (0 with an empty answer)")
    end: int
    score: float = Field(description="probability of the span: p(start) · p(end) in its window")


class AccuracyRow(BaseModel):
    metric: str
    value: float
    split: str
    n: int


class BuildProgressEntry(BaseModel):
    done: int
    total: int = Field(description="0 where the step's size is not known")
    unit: str = ""


class LatencyEntry(BaseModel):
    p50_ms: float
    p95_ms: float
    requests: int = Field(description="the recent successful requests these percentiles come from (at most 1,024)")


class ModelEntry(BaseModel):
    task: str
    precision: str
    model: str
    status: str = Field(description="`loaded` (serving), `loading`, or `refused` with the reason")
    state: str = Field(
        "pending",
        description="the model's step: `pending` (queued to build), `building`, `evaluating`, `loading`, "
        "`compiling` (served eagerly meanwhile), `ready`, `refused` (a worker could not load it) or `failed` (its "
        "build failed)",
    )
    serving: bool = Field(False, description="whether requests for it are answered now (else 503 with Retry-After)")
    progress: BuildProgressEntry | None = Field(None, description="while building or evaluating: how far")
    artifact: str | None = Field(
        None,
        description="the artifact that answers, by its precision name: this model's own, or its stand-in (built in "
        "seconds) while this one is still being built",
    )
    bits_per_weight: float | None = None
    packed_bytes: int | None = None
    runtime_bytes: int | None = None
    fp32_bytes: int | None = None
    load_seconds: float | None = None
    backend: str | None = Field(
        None,
        description="how the model executes: `packed` (our kernels on the packed codes), `compiled` (torch.compile), "
        "`eager` (the reference), `packed-eager` (packed, while it compiles) or `openvino`",
    )
    accuracy: list[AccuracyRow] = Field(default_factory=list)
    latency: LatencyEntry | None = Field(
        None, description="end-to-end milliseconds of its recent requests at the API (null until it has answered one)"
    )
    reason: str | None = None


class ModelsResponse(BaseModel):
    default_precision: str
    models: list[ModelEntry]


class ErrorResponse(BaseModel):
    error: str
    detail: str
    available: Any = None
