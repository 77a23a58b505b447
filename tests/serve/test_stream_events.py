"""The SSE stream's events: text chunks made from a per-choice template are the characters the dict + json
path makes; `stream_interval` coalesces the tokens of a stream into fewer events, text unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from mambalab.errors import MambalabError
from mambalab.serve.engine import Engine
from mambalab.serve.scheduler import Limits
from tests.serve.conftest import MODEL_NAME, TOK, byte_model, start_server

pytest.importorskip("fastapi")

TEXTS = ["", "a", "Hello, world", 'quote " backslash \\ slash /', "line\nbreak\ttab\r\x00\x1f\x7f",
         "café ü ß", "日本語", "emoji 😀 outside the BMP", "\ufffd", "\u2028\u2029", "</s><|user|>"]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("model_name", ["tiny", 'a "quoted" módel', "holds the mark \x00text\x00 in its name"])
def test_text_events_are_the_dict_path_characters(chat, include_usage, model_name):
    from mambalab.serve.app import _Envelope

    envelope = _Envelope(chat, model_name, stream=True)
    for index in (0, 3):
        for text in TEXTS:
            fast = envelope.text_event(index, text, include_usage)
            assert fast == envelope.event(envelope.chunk(index, text=text), include_usage), (index, text)
            payload = json.loads(fast.removeprefix("data: "))
            choice = payload["choices"][0]
            assert (choice["delta"]["content"] if chat else choice["text"]) == text
            assert choice["index"] == index and choice["finish_reason"] is None
            assert ("usage" in payload) == include_usage and payload["model"] == model_name


def test_a_negative_stream_interval_is_refused():
    with pytest.raises(MambalabError, match="stream_interval"):
        start_server(Engine(byte_model(), TOK), stream_interval=-0.1)


@pytest.fixture(scope="module")
def coalescing():
    """A server whose streams send at most one event per 0.3 s after the first token."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = Engine(byte_model(), TOK, limits=Limits(max_model_len=4096, max_prefill_tokens=64))
    thread = start_server(engine, stream_interval=0.3)
    yield thread.url
    thread.stop()
    torch.set_num_threads(previous)


def _sse(url: str, path: str, body: dict) -> list[dict | str]:
    import httpx

    with httpx.stream("POST", f"{url}/v1/{path}", json=body, timeout=60) as response:
        response.raise_for_status()
        data = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


@pytest.mark.parametrize("chat", [False, True])
def test_coalesced_streams_carry_every_token_in_few_events(coalescing, chat):
    import httpx

    path = "chat/completions" if chat else "completions"
    ask = {"messages": [{"role": "user", "content": "Tell me"}]} if chat else {"prompt": "Once upon a time"}
    body = {"model": MODEL_NAME, **ask, "max_tokens": 120, "temperature": 0, "ignore_eos": True}
    whole = httpx.post(f"{coalescing}/v1/{path}", json=body, timeout=60).json()
    events = _sse(coalescing, path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]
    chunks = events[:-2]
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
        chunks = chunks[1:]
    texts = [c["choices"][0]["delta"].get("content") if chat else c["choices"][0]["text"] for c in chunks]
    expected = whole["choices"][0]["message"]["content"] if chat else whole["choices"][0]["text"]
    assert "".join(t or "" for t in texts) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks)
    # 120 tokens of a tiny model take well under a second: the first token's event, then one every 0.3 s.
    assert 2 <= len(chunks) <= 6, texts
