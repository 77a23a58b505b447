"""The OpenAI-compatible server, started on 127.0.0.1:0 in a thread and queried with urllib."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

from mambalab import LanguageModel, ModelConfig, SSMConfig
from mambalab.inference.generate import generate
from mambalab.serve.app import OpenAIApp, Server
from mambalab.serve.engine import Engine, TextStream
from mambalab.tokenizer import ByteTokenizer

SYSTEM = "You are a tiny test model."
TOK = ByteTokenizer()


def byte_model() -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_layer=2, vocab_size=TOK.vocab_size, ssm=SSMConfig(d_state=8))
    return LanguageModel(config).double().eval()


@pytest.fixture(scope="module")
def server():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the server thread outlives each test's tests/conftest.py::_one_thread
    model = byte_model()
    srv = Server(OpenAIApp(Engine(model, TOK), "tiny", system_prompt=SYSTEM), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    torch.set_num_threads(previous)


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def request(server, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url(server, path), data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def events(server, path: str, body: dict) -> list:
    req = urllib.request.Request(url(server, path), data=json.dumps({**body, "stream": True}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        lines = [line.decode().strip() for line in resp]
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_models(server):
    status, body = request(server, "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny"


def test_greedy_completion_matches_generate(server):
    prompt = "Hello, state space"
    status, body = request(server, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert status == 200 and body["object"] == "text_completion"
    ids = TOK.encode(prompt)
    expected = generate(server.app.engine.model, [ids], 12, eos_token_id=TOK.eos_token_id).sequences[0]
    choice = body["choices"][0]
    assert choice["text"] == TOK.decode(expected)
    assert choice["finish_reason"] == ("stop" if expected[-1] == TOK.eos_token_id else "length")
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(expected),
                             "total_tokens": len(ids) + len(expected)}


def test_streamed_completion_equals_the_whole_one(server):
    req = {"prompt": ["abc", "a longer prompt"], "max_tokens": 10, "temperature": 0}
    _, whole = request(server, "/v1/completions", req)
    chunks = events(server, "/v1/completions", req)
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == whole["choices"][i]["text"]
        assert mine[-1]["finish_reason"] == whole["choices"][i]["finish_reason"]


def test_chat_resumes_from_the_cached_system_prompt(server):
    messages = [{"role": "user", "content": "What is a selective scan?"}]
    engine = server.app.engine
    hits = engine.cache.hits
    status, body = request(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 10, "temperature": 0})
    assert status == 200 and engine.cache.hits == hits + 1
    uncached = OpenAIApp(Engine(engine.model, TOK))  # no configured system prompt, nothing cached
    explicit = [{"role": "system", "content": SYSTEM}, *messages]
    opts = uncached.options({"max_tokens": 10, "temperature": 0}, ["<|user|>", "<|system|>"])
    reference = uncached.run([uncached.chat_prompt({"messages": explicit})], opts)[0]
    assert uncached.engine.cache.hits == 0
    assert body["choices"][0]["message"] == {"role": "assistant", "content": reference.text}

    chunks = events(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 10, "temperature": 0})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == reference.text
    assert chunks[-1]["choices"][0]["finish_reason"] == reference.finish_reason


def test_stop_strings_cut_the_text(server):
    req = {"prompt": "The", "max_tokens": 16, "temperature": 0}
    text = request(server, "/v1/completions", req)[1]["choices"][0]["text"]
    stop = text[4:6]
    assert len(stop) == 2
    _, body = request(server, "/v1/completions", {**req, "stop": [stop]})
    assert body["choices"][0] == {"index": 0, "text": text[: text.find(stop)], "logprobs": None,
                                  "finish_reason": "stop"}


def test_seeded_sampling_is_reproducible(server):
    req = {"prompt": "xyz", "max_tokens": 12, "temperature": 1.3, "top_k": 50, "seed": 3}
    assert request(server, "/v1/completions", req)[1]["choices"] == request(server, "/v1/completions", req)[1]["choices"]


def test_token_id_prompts(server):
    status, body = request(server, "/v1/completions", {"prompt": [72, 105], "max_tokens": 3, "temperature": 0})
    assert status == 200 and body["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize(
    "path, body, param",
    [("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
     ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
     ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
     ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p"),
     ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
     ("/v1/completions", {"prompt": "x", "stop": 3}, "stop"),
     ("/v1/completions", {"prompt": [1, TOK.vocab_size]}, "prompt"),
     ("/v1/completions", {"prompt": ""}, "prompt"),
     ("/v1/completions", {"max_tokens": 3}, "prompt"),
     ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
     ("/v1/chat/completions", {"messages": []}, "messages")],
)
def test_bad_requests_get_400_naming_the_param_and_the_server_lives_on(server, path, body, param):
    status, err = request(server, path, body)
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param
    assert request(server, "/v1/completions", {"prompt": "ok", "max_tokens": 2})[0] == 200


def test_malformed_bodies_and_unknown_paths(server):
    status, err = request(server, "/v1/completions", raw=b"{not json")
    assert status == 400 and "JSON" in err["error"]["message"]
    assert request(server, "/v1/completions", raw=b"[1, 2]")[0] == 400
    assert request(server, "/v1/nothing", {"prompt": "x"})[0] == 404
    assert request(server, "/v1/models/extra")[0] == 404


def test_concurrent_requests_are_served(server):
    results = []
    req = {"prompt": "concurrent", "max_tokens": 6, "temperature": 0}
    threads = [threading.Thread(target=lambda: results.append(request(server, "/v1/completions", req)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(status == 200 for status, _ in results)
    assert len({body["choices"][0]["text"] for _, body in results}) == 1


def test_text_stream_holds_back_partial_characters_and_stop_strings():
    stream = TextStream(TOK, stop=["END"])
    out = [stream.push(t) for t in TOK.encode("é a E")]
    assert out == ["", "é", " ", "a", " ", ""]  # é is two bytes; "E" may start "END"
    assert [stream.push(t) for t in TOK.encode("x EN")] == ["Ex", " ", "", ""]
    assert stream.push(TOK.encode("D")[0]) == "" and stream.stopped
    assert stream.emitted == "é a Ex " and stream.finish() == ""
    tail = TextStream(TOK, stop=["END"])
    assert [tail.push(t) for t in TOK.encode("aEN")] == ["a", "", ""] and tail.finish() == "EN"
