"""The OpenAI request bodies this server accepts, as strict pydantic models, and its error bodies.

Every accepted field is declared with its bounds; anything else is refused with a 400 naming it: fields of
the OpenAI API this server does not implement (`UNSUPPORTED`: tools, response_format, logit_bias, ...) and
unknown fields alike. Types are strict (no "1" for 1, no true for a token id), numbers finite.

Errors are `ApiError`s, answered as `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_PROMPTS = 64  # choices in one request: prompts of a completions request x n
MAX_MESSAGES = 4096
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_NAME_CHARS = 256

# OpenAI fields this server refuses when given a value (null is taken as absent).
UNSUPPORTED = (
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "response_format",
    "logit_bias", "best_of", "suffix", "top_logprobs", "audio", "modalities", "prediction",
    "reasoning_effort", "web_search_options", "service_tier", "store", "metadata",
)


class ApiError(Exception):
    """An error answered with `status` and an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Generation(_Strict):
    """The options shared by both endpoints."""

    model: str = Field(max_length=MAX_NAME_CHARS)
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: no top-k
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: (
        Annotated[str, Field(max_length=MAX_STOP_CHARS)]
        | Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP_STRINGS)]
        | None
    ) = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=MAX_PROMPTS)  # choices per prompt; prompts x n <= MAX_PROMPTS
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    ignore_eos: bool | None = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)

    def stop_strings(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


TokenIds = Annotated[list[int], Field(min_length=1)]


class CompletionRequest(_Generation):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Generation):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool | None = None


# The names pydantic gives the members of a union in an error's location (not fields).
_UNION_TAG = re.compile(r"^(list\[.*\]|str|int|float|bool|constrained-.*|function-.*)$")
_PROMPT_SHAPES = "a string, a list of strings, a list of token ids, or a list of token-id lists (each non-empty)"


def parse(model: type[_Generation], body: dict) -> _Generation:
    """Validate a request body; ApiError(400) naming the first bad field."""
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            raise ApiError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")
    body = {k: v for k, v in body.items() if k not in UNSUPPORTED}
    try:
        request = model.model_validate(body)
    except ValidationError as e:
        raise _api_error(e) from None
    _check_supported(request)
    return request


def _check_supported(r: _Generation) -> None:
    """Accepted by the schema, but only in their neutral setting."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(r, name):
            raise ApiError(400, f"{name} is not supported; use repetition_penalty", name, "unsupported_parameter")
    if r.logprobs:
        raise ApiError(400, "logprobs are not supported", "logprobs", "unsupported_parameter")
    if getattr(r, "echo", False):
        raise ApiError(400, "echo is not supported", "echo", "unsupported_parameter")
    if r.stream_options is not None and not r.stream:
        raise ApiError(400, "stream_options is only allowed with stream = true", "stream_options")


def _api_error(e: ValidationError) -> ApiError:
    first = e.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"]]
    param = loc[0] if loc else None
    if first["type"] == "extra_forbidden":
        where = ".".join(loc)
        return ApiError(400, f"unknown field '{where}'", param, "unknown_parameter")
    if param == "prompt":
        return ApiError(400, f"prompt must be {_PROMPT_SHAPES}", param)
    where = ".".join(part for part in loc if not _UNION_TAG.match(part))
    return ApiError(400, f"{where or 'body'}: {first['msg']}", param)
