"""What every kind's request and response schemas share: strict bodies, one text or several, and who answered."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsRequest(StrictRequest):
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

    def where(self, index: int, single: str = "text", several: str = "texts") -> str:
        """How an error names the text at `index`: `text`, or `texts[index]`."""
        return single if self.text is not None else f"{several}[{index}]"


class Answered(BaseModel):
    """Who answered: every predict response starts with these."""

    task: str
    precision: str
    model: str = Field(description="checkpoint name @ the first 12 hex digits of the artifact's weights sha256")
