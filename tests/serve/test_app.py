"""The OpenAI-compatible server's happy paths, over real HTTP with the `openai` client."""

from __future__ import annotations

import json

import pytest

from mambalab.inference.generate import generate
from mambalab.serve.chat import ChatFormat
from mambalab.serve.engine import Engine
from tests.serve.conftest import MAX_MODEL_LEN, MODEL_NAME, SYSTEM, TOK, Served, byte_model, start_server

__all__ = ["byte_model"]  # tests/inference/test_cli_generate.py imports it from here


def greedy(model, ids: list[int], n: int) -> list[int]:
    return generate(model, [ids], n, eos_token_id=TOK.eos_token_id).sequences[0]


def test_models_health_and_version(served):
    import httpx

    models = served.client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert served.client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    assert httpx.get(f"{served.url}/health", timeout=10).json() == {"status": "ok"}
    assert "version" in httpx.get(f"{served.url}/version", timeout=10).json()


def test_greedy_completion_matches_generate(served):
    prompt = "Hello, state space"
    out = served.client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0)
    ids = TOK.encode(prompt)
    expected = greedy(served.engine.model, ids, 12)
    choice = out.choices[0]
    assert out.object == "text_completion" and choice.text == TOK.decode(expected)
    assert choice.finish_reason == ("stop" if expected[-1] == TOK.eos_token_id else "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(ids), len(expected))
    assert out.usage.total_tokens == len(ids) + len(expected)


def test_streamed_completion_equals_the_whole_one_with_usage(served):
    req = {"model": MODEL_NAME, "prompt": ["abc", "a longer prompt"], "max_tokens": 10, "temperature": 0}
    whole = served.client.completions.create(**req)
    chunks = list(served.client.completions.create(**req, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    for i in range(2):
        mine = [c.choices[0] for c in chunks[:-1] if c.choices[0].index == i]
        assert "".join(c.text for c in mine) == whole.choices[i].text
        assert mine[-1].finish_reason == whole.choices[i].finish_reason
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_resumes_from_the_cached_system_prompt(served):
    messages = [{"role": "user", "content": "What is a selective scan?"}]
    cache = served.engine.cache
    hits = cache.hits
    reply = served.client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10,
                                                  temperature=0)
    assert cache.hits == hits + 1
    uncached = Engine(served.engine.model, TOK)  # no configured system prompt, nothing cached
    chat = ChatFormat(TOK)
    prompt = chat.tokens([("system", SYSTEM), ("user", messages[0]["content"])])
    (reference,) = uncached.complete([prompt], 10, stop=chat.stops)
    assert uncached.cache.hits == 0
    assert reply.choices[0].message.content == reference.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(prompt)

    chunks = list(served.client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=10,
                                                        temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reference.text
    assert chunks[-1].choices[0].finish_reason == reference.finish_reason


def test_a_clients_own_system_prompt_is_cached_after_its_first_request(served):
    system = "You are a client's assistant; " + "be exact. " * 8
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "first question"}]
    first = served.client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages[1]["content"] = "another question"
    second = served.client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0)
    chat = ChatFormat(TOK)
    assert second.usage.prompt_tokens_details.cached_tokens == len(chat.system_tokens(system))
    prompt = chat.tokens([("system", system), ("user", "another question")])
    (reference,) = Engine(served.engine.model, TOK).complete([prompt], 6, stop=chat.stops)
    assert second.choices[0].message.content == reference.text
    assert second.usage.prompt_tokens == len(prompt)


def test_a_conversations_next_turn_resumes_from_the_previous_prompt(served):
    messages = [{"role": "user", "content": "turn one " * 20}]
    first = served.client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0)
    chat = ChatFormat(TOK)
    turn_one = chat.tokens([("system", SYSTEM), ("user", messages[0]["content"])])
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "turn two"}]
    second = served.client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0)
    conversation = [("system", SYSTEM)] + [(m["role"], m["content"]) for m in messages]
    prompt = chat.tokens(conversation)
    assert prompt[: len(turn_one)] == turn_one
    assert second.usage.prompt_tokens_details.cached_tokens == len(turn_one)
    (reference,) = Engine(served.engine.model, TOK).complete([prompt], 6, stop=chat.stops)
    assert second.choices[0].message.content == reference.text


def test_stop_strings_cut_the_text(served):
    req = {"model": MODEL_NAME, "prompt": "The", "max_tokens": 16, "temperature": 0}
    text = served.client.completions.create(**req).choices[0].text
    stop = text[4:6]
    assert len(stop) == 2
    choice = served.client.completions.create(**req, stop=[stop]).choices[0]
    assert (choice.text, choice.finish_reason) == (text[: text.find(stop)], "stop")


def test_seeded_sampling_is_reproducible(served):
    req = {"model": MODEL_NAME, "prompt": "xyz", "max_tokens": 12, "temperature": 1.3, "seed": 3,
           "extra_body": {"top_k": 50}}
    first = served.client.completions.create(**req).choices[0].text
    assert served.client.completions.create(**req).choices[0].text == first
    other = served.client.completions.create(**{**req, "seed": 4}).choices[0].text
    assert other != first


def test_token_id_prompts_and_default_max_tokens(served):
    out = served.client.completions.create(model=MODEL_NAME, prompt=[72, 105], temperature=0)
    assert out.usage.prompt_tokens == 2 and out.usage.completion_tokens <= 16
    assert out.choices[0].text == TOK.decode(greedy(served.engine.model, [72, 105], 16))


def test_max_tokens_past_the_context_limit_is_refused(served):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        served.client.completions.create(model=MODEL_NAME, prompt="abc", max_tokens=MAX_MODEL_LEN)
    assert err.value.body["param"] == "max_tokens" and str(MAX_MODEL_LEN) in err.value.body["message"]
    fits = served.client.completions.create(model=MODEL_NAME, prompt="abc", max_tokens=3, temperature=0)
    assert fits.usage.completion_tokens <= 3


def test_api_key_is_required_when_configured():
    import httpx
    import openai

    engine = Engine(byte_model(), TOK)
    thread = start_server(engine, api_key="sesame")
    try:
        with pytest.raises(openai.AuthenticationError):
            Served(engine, thread, api_key="wrong").client.models.list()
        response = httpx.post(f"{thread.url}/v1/completions", json={"model": MODEL_NAME, "prompt": "x"}, timeout=10)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        good = Served(engine, thread, api_key="sesame").client
        assert good.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(f"{thread.url}/health", timeout=10).status_code == 200  # no key needed
    finally:
        thread.stop()


def test_the_models_chat_template_is_used(tmp_path):
    template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    chat = ChatFormat.from_dir(tmp_path, TOK)
    tokens = chat.tokens([("system", "Be brief."), ("user", "hi")])
    assert tokens == TOK.encode("[system]Be brief.</s>[user]hi</s>[assistant]")
    assert tokens[: len(chat.system_tokens("Be brief."))] == chat.system_tokens("Be brief.")
    assert chat.stops == [] and ChatFormat.from_dir(tmp_path / "none", TOK).stops == ["<|user|>", "<|system|>"]


def test_a_template_that_refuses_a_lone_system_message(tmp_path):
    """No shared system prefix then (each conversation is tokenized whole), and a conversation the template
    refuses is a ChatTemplateError (answered with a 400)."""
    from mambalab.serve.chat import ChatTemplateError

    template = ("{% if messages[-1].role == 'system' %}{{ raise_exception('needs a user turn') }}{% endif %}"
                "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    chat = ChatFormat.from_dir(tmp_path, TOK)
    assert chat.tokens([("system", "S"), ("user", "hi")]) == TOK.encode("<system>S<user>hi<assistant>")
    with pytest.raises(ChatTemplateError, match="needs a user turn"):
        chat.tokens([("system", "S")])
