"""Hostile requests: each gets its 4xx with an OpenAI-style JSON error body, and the server lives on."""

from __future__ import annotations

import json

import pytest

from tests.serve.conftest import MAX_MODEL_LEN, MODEL_NAME, TOK

httpx = pytest.importorskip("httpx")

OK = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
C, CC = "/v1/completions", "/v1/chat/completions"


def raw(text: str) -> bytes:
    return text.encode()


# (id, method, path, body: dict | bytes | None, expected status, expected param or None)
CASES = [
    ("not-json", "POST", C, raw("{not json"), 400, None),
    ("json-array", "POST", C, raw("[1, 2]"), 400, None),
    ("empty-body", "POST", C, b"", 400, None),
    ("deeply-nested", "POST", C, raw("[" * 100_000 + "]" * 100_000), 400, None),
    ("nested-in-a-field", "POST", C, raw('{"model": "tiny", "prompt": "x", "user": ' + "[" * 50_000 + "]" * 50_000
                                         + "}"), 400, None),
    ("invalid-utf8", "POST", C, b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, None),
    ("lone-surrogate-prompt", "POST", C, raw('{"model": "tiny", "prompt": ["ok", "hi \\ud83d"], "max_tokens": 2}'),
     400, "prompt"),
    ("lone-surrogate-message", "POST", CC, raw('{"model": "tiny", "messages": [{"role": "user", "content":'
                                               ' "\\ud83d"}], "max_tokens": 2}'), 400, "messages"),
    ("huge-int-literal", "POST", C, raw('{"model": "tiny", "prompt": [' + "9" * 100_000 + "]}"), 400, None),
    ("temperature-nan", "POST", C, raw('{"model": "tiny", "prompt": "x", "temperature": NaN}'), 400, "temperature"),
    ("temperature-inf", "POST", C, raw('{"model": "tiny", "prompt": "x", "temperature": Infinity}'), 400,
     "temperature"),
    ("temperature-negative", "POST", C, {**OK, "temperature": -1}, 400, "temperature"),
    ("temperature-string", "POST", C, {**OK, "temperature": "1"}, 400, "temperature"),
    ("top-p-zero", "POST", C, {**OK, "top_p": 0}, 400, "top_p"),
    ("top-p-above-one", "POST", C, {**OK, "top_p": 1.5}, 400, "top_p"),
    ("top-k-negative", "POST", C, {**OK, "top_k": -5}, 400, "top_k"),
    ("repetition-penalty-zero", "POST", C, {**OK, "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("frequency-penalty", "POST", C, {**OK, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("max-tokens-negative", "POST", C, {**OK, "max_tokens": -1}, 400, "max_tokens"),
    ("max-tokens-huge", "POST", C, {**OK, "max_tokens": 10**9}, 400, "max_tokens"),
    ("max-tokens-bool", "POST", C, {**OK, "max_tokens": True}, 400, "max_tokens"),
    ("max-completion-tokens-huge", "POST", CC, {**CHAT, "max_completion_tokens": MAX_MODEL_LEN}, 400,
     "max_tokens"),
    ("bools-as-token-ids", "POST", C, {**OK, "prompt": [True, False]}, 400, "prompt"),
    ("token-id-outside-vocab", "POST", C, {**OK, "prompt": [1, TOK.vocab_size]}, 400, "prompt"),
    ("token-id-negative", "POST", C, {**OK, "prompt": [-1]}, 400, "prompt"),
    ("empty-string-prompt", "POST", C, {**OK, "prompt": ""}, 400, "prompt"),
    ("empty-list-prompt", "POST", C, {**OK, "prompt": []}, 400, "prompt"),
    ("empty-row-prompt", "POST", C, {**OK, "prompt": [[]]}, 400, "prompt"),
    ("100k-prompt-rows", "POST", C, {**OK, "prompt": [[1]] * 100_000}, 400, "prompt"),
    ("prompt-past-max-model-len", "POST", C, {**OK, "prompt": [65] * (MAX_MODEL_LEN + 1)}, 400, "prompt"),
    ("prompt-object", "POST", C, {**OK, "prompt": {"text": "x"}}, 400, "prompt"),
    ("missing-prompt", "POST", C, {"model": MODEL_NAME}, 400, "prompt"),
    ("missing-model", "POST", C, {"prompt": "x"}, 400, "model"),
    ("unknown-model", "POST", C, {**OK, "model": "gpt-4"}, 404, "model"),
    ("tools", "POST", CC, {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("tool-choice", "POST", CC, {**CHAT, "tool_choice": "auto"}, 400, "tool_choice"),
    ("functions", "POST", CC, {**CHAT, "functions": [{"name": "f"}]}, 400, "functions"),
    ("response-format", "POST", CC, {**CHAT, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ("logit-bias", "POST", C, {**OK, "logit_bias": {"50": 100}}, 400, "logit_bias"),
    ("best-of", "POST", C, {**OK, "best_of": 2}, 400, "best_of"),
    ("suffix", "POST", C, {**OK, "suffix": "end"}, 400, "suffix"),
    ("unknown-field", "POST", C, {**OK, "frobnicate": 1}, 400, "frobnicate"),
    ("n-two", "POST", C, {**OK, "n": 2}, 400, "n"),
    ("logprobs", "POST", C, {**OK, "logprobs": 5}, 400, "logprobs"),
    ("echo", "POST", C, {**OK, "echo": True}, 400, "echo"),
    ("stop-number", "POST", C, {**OK, "stop": 3}, 400, "stop"),
    ("five-stops", "POST", C, {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("seed-string", "POST", C, {**OK, "seed": "x"}, 400, "seed"),
    ("seed-too-large", "POST", C, {**OK, "seed": 2**70}, 400, "seed"),
    ("stream-string", "POST", C, {**OK, "stream": "yes"}, 400, "stream"),
    ("stream-options-without-stream", "POST", C, {**OK, "stream_options": {"include_usage": True}}, 400,
     "stream_options"),
    ("stream-options-unknown", "POST", C, {**OK, "stream": True, "stream_options": {"foo": 1}}, 400,
     "stream_options"),
    ("chat-no-messages", "POST", CC, {**CHAT, "messages": []}, 400, "messages"),
    ("chat-messages-string", "POST", CC, {**CHAT, "messages": "hi"}, 400, "messages"),
    ("chat-unknown-role", "POST", CC, {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    ("chat-image-part", "POST", CC, {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages"),
    ("chat-tool-calls", "POST", CC, {**CHAT, "messages": [{"role": "assistant", "content": "x",
                                                          "tool_calls": []}]}, 400, "messages"),
    ("put", "PUT", C, OK, 405, None),
    ("delete", "DELETE", CC, CHAT, 405, None),
    ("get-on-post-route", "GET", C, None, 405, None),
    ("options", "OPTIONS", "/v1/models", None, 405, None),
    ("post-on-get-route", "POST", "/v1/models", OK, 405, None),
    ("unknown-path", "GET", "/v2/everything", None, 404, None),
    ("unknown-model-card", "GET", "/v1/models/gpt-4", None, 404, "model"),
    ("oversized-body", "POST", C, raw('{"model": "tiny", "prompt": "' + "x" * (5 << 20) + '"}'), 413, None),
]


@pytest.mark.parametrize("method, path, body, status, param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_json_4xx(served, method, path, body, status, param):
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    response = httpx.request(method, served.url + path, content=content, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    assert httpx.post(served.url + C, json=OK, timeout=30).status_code == 200  # and the server lives on


def test_the_table_is_large_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
