"""Continuous batching: concurrent requests give exactly what they give alone, share decode steps, and no
stalled reader, disconnected client or long prompt holds up the others."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
import torch

from mambalab.inference.prefix_cache import PrefixCache
from mambalab.inference.sampling import SamplingConfig
from mambalab.serve.engine import Engine
from mambalab.serve.scheduler import Limits, Request, RequestRejected, Scheduler
from tests.serve.conftest import MODEL_NAME, TOK, byte_model, start_server

httpx = pytest.importorskip("httpx")

REQUESTS = [
    {"prompt": f"prompt number {i} " + "x" * (3 * i), "max_tokens": 8 + i % 5,
     **({"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "seed": 100 + i, "extra_body": {"top_p": 0.9}})}
    for i in range(12)
]


def run(client, req: dict):
    out = client.completions.create(model=MODEL_NAME, **req)
    return out.choices[0].text, out.choices[0].finish_reason, out.usage.completion_tokens


def test_concurrent_seeded_and_greedy_requests_equal_the_same_requests_alone(served):
    alone = [run(served.client, req) for req in REQUESTS]
    steps = served.engine.scheduler.steps
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda r: run(served.client, r), REQUESTS))
    assert together == alone
    decoded = sum(n for _, _, n in together)
    assert served.engine.scheduler.steps - steps < decoded  # rows shared decode steps


def test_the_scheduler_batches_rows_and_keeps_each_rows_tokens():
    """Without HTTP: 6 requests submitted at once decode together (one step per token position), and each
    row's text is the one it gets alone, greedy or with its own seeded generator."""
    model = byte_model()
    engine = Engine(model, TOK, limits=Limits(max_prefill_tokens=7))  # prompts need several chunks
    prompts = [TOK.encode(f"row {i} " + "y" * (4 * i)) for i in range(6)]
    configs = [SamplingConfig() if i % 2 else SamplingConfig(do_sample=True, temperature=1.1, top_k=40)
               for i in range(6)]
    alone = [engine.complete([p], 10, seed=7, **vars(c))[0].text for p, c in zip(prompts, configs)]
    requests = [Request(p, 10, c, seed=7) for p, c in zip(prompts, configs)]
    scheduler = engine.scheduler
    steps = scheduler.steps
    scheduler.submit(requests)
    scheduler.run_until_done(requests)
    assert [r.text.emitted for r in requests] == alone
    assert all(r.finish_reason in ("stop", "length") for r in requests)
    assert scheduler.steps - steps < sum(r.completion_tokens for r in requests) // 2


def test_bucketed_slots_reuse_compact_and_keep_each_rows_tokens():
    """The CUDA layout, run on CPU: the batch padded to 1, 2, 4, 8 rows; requests arriving in waves (prompts
    of equal length prefilled together, their rows written into free slots at once, long ones chunked) and
    leaving at different steps; the batch grows and shrinks; every row's text is the one it gets alone."""
    model = byte_model()
    lengths = [3, 17, 9, 30, 5, 12, 25, 2, 8, 14, 6]
    prompts = [TOK.encode(f"slot {i:02d}" + ("long " * 5 if i == 4 else "")) for i in range(len(lengths))]
    sampling = [SamplingConfig(do_sample=bool(i % 3), temperature=0.8) for i in range(len(lengths))]
    alone = Engine(model, TOK)
    expected = [alone.complete([p], n, seed=i, **vars(c))[0].text
                for i, (p, n, c) in enumerate(zip(prompts, lengths, sampling))]
    scheduler = Scheduler(model, TOK, PrefixCache(model), Limits(max_num_seqs=7, max_prefill_tokens=20),
                          bucketed=True)
    requests = [Request(p, n, c, seed=i) for i, (p, n, c) in enumerate(zip(prompts, lengths, sampling))]
    capacities, start = set(), 0
    for wave in (1, 3, 2, 4, 1):  # waves of requests, two steps apart
        scheduler.submit(requests[start : start + wave])
        start += wave
        for _ in range(2):
            scheduler.step()
            capacities.add(len(scheduler._slots))
    while not all(r.done.is_set() for r in requests):
        scheduler.step()
        capacities.add(len(scheduler._slots))
    assert [r.text.emitted for r in requests] == expected
    assert {1, 2, 4, 8} & capacities and capacities <= {0, 1, 2, 4, 8}


def test_a_request_whose_token_choice_fails_fails_alone(monkeypatch):
    """An exception while choosing one request's token (its sampling options) finishes that request with an
    error; the request beside it in the same step decodes on to the same text as alone."""
    from mambalab.inference.sampling import SamplingConfig

    engine = Engine(byte_model(), TOK)
    expected = engine.complete([TOK.encode("hello")], 12, seed=3, do_sample=True)[0].text
    scheduler: Scheduler = engine.scheduler
    bad_options = SamplingConfig(do_sample=True)
    choose = SamplingConfig.choose

    def failing_choose(self, *args, **kwargs):
        if self is bad_options:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return choose(self, *args, **kwargs)

    monkeypatch.setattr(SamplingConfig, "choose", failing_choose)
    good = Request(TOK.encode("hello"), 12, SamplingConfig(do_sample=True), seed=3)
    bad = Request(TOK.encode("world"), 12, bad_options, seed=3)
    scheduler.submit([good, bad])
    scheduler.run_until_done([good, bad])
    assert bad.finish_reason == "error" and "probability tensor" in bad.error
    assert good.error is None and good.text.emitted == expected


@pytest.mark.parametrize("max_new_tokens", [-1, -100, 2.5, True])
def test_a_bad_max_new_tokens_is_rejected_naming_max_tokens(max_new_tokens):
    from mambalab.serve.scheduler import RequestRejected

    with pytest.raises(RequestRejected, match="max_tokens must be an int >= 0") as info:
        Engine(byte_model(), TOK).complete([TOK.encode("hi")], max_new_tokens)
    assert info.value.param == "max_tokens"


def test_a_long_prompt_does_not_starve_decoding():
    """While a long prompt prefills in chunks of max_prefill_tokens, a running request keeps decoding."""
    engine = Engine(byte_model(), TOK, limits=Limits(max_prefill_tokens=16))
    scheduler: Scheduler = engine.scheduler
    short = Request(TOK.encode("hi"), 40)
    scheduler.submit([short])
    scheduler.step()
    long = Request(TOK.encode("z" * 400), 1)
    scheduler.submit([long])
    for _ in range(10):
        scheduler.step()
    assert short.completion_tokens >= 10 and not long.done.is_set()
    scheduler.run_until_done([short, long])


def _raw_request(url: str, body: dict) -> socket.socket:
    """Send a POST on a raw socket and return the socket without reading the answer."""
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=10)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _timed(client) -> float:
    start = time.monotonic()
    out = client.completions.create(model=MODEL_NAME, prompt="quick", max_tokens=4, temperature=0)
    assert out.usage.completion_tokens >= 1
    return time.monotonic() - start


def _wait_idle(scheduler: Scheduler, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while scheduler.busy and time.monotonic() < deadline:
        time.sleep(0.02)
    return not scheduler.busy


def test_a_stalled_streaming_reader_does_not_delay_others(served):
    long = {"model": MODEL_NAME, "prompt": "stall", "max_tokens": 3000, "temperature": 0, "stream": True}
    stalled = _raw_request(served.url, long)  # never read
    try:
        time.sleep(0.2)
        assert served.engine.scheduler.busy
        assert _timed(served.client) < 5.0
        # the stalled request's generation goes on without its reader, and ends; its text waits for it
        assert _wait_idle(served.engine.scheduler, 60)
    finally:
        stalled.close()


def test_a_disconnected_client_is_cancelled(served):
    long = {"model": MODEL_NAME, "prompt": "leave", "max_tokens": 4000, "temperature": 0}
    for stream in (False, True):
        sock = _raw_request(served.url, {**long, "stream": stream})
        time.sleep(0.3)
        assert served.engine.scheduler.busy
        sock.close()
        start = time.monotonic()
        assert _wait_idle(served.engine.scheduler, 10)  # cancelled long before its 4000 tokens
        assert time.monotonic() - start < 3.0
        assert _timed(served.client) < 5.0


def test_many_concurrent_streams_complete(served):
    def stream(i: int) -> str:
        chunks = served.client.completions.create(model=MODEL_NAME, prompt=f"s{i}", max_tokens=6, temperature=0,
                                                  stream=True)
        return "".join(c.choices[0].text for c in chunks)

    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(stream, range(16)))
    alone = [run(served.client, {"prompt": f"s{i}", "max_tokens": 6, "temperature": 0})[0] for i in range(16)]
    assert texts == alone
    assert threading.active_count() < 100


def test_timeouts_and_a_full_queue_are_refused_cleanly():
    """A request past --request-timeout ends (HTTP 408); past max_waiting queued requests, 429."""
    engine = Engine(byte_model(), TOK, limits=Limits(request_timeout=0.5, max_waiting=2))
    with pytest.raises(RequestRejected) as full:
        engine.scheduler.submit([Request([1], 1) for _ in range(3)])
    assert full.value.status == 429
    thread = start_server(engine)
    try:
        body = {"model": MODEL_NAME, "prompt": "slow", "max_tokens": 4000, "temperature": 0}
        response = httpx.post(f"{thread.url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 408 and response.json()["error"]["code"] == "request_timeout"
        with httpx.stream("POST", f"{thread.url}/v1/completions", json={**body, "stream": True}, timeout=30) as r:
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and "timeout" in lines[-2]
    finally:
        thread.stop()


@pytest.mark.parametrize("bucketed", [False, True], ids=["exact", "bucketed"])
def test_a_hybrid_model_with_kv_caches_is_served_row_for_row(bucketed):
    """The scheduler uses only the model protocol: attention layers (KV caches of different lengths, joined
    by padding) decode each row as `generate` does alone."""
    from mambalab import LanguageModel, ModelConfig, SSMConfig
    from mambalab.inference.generate import generate

    torch.manual_seed(1)
    config = ModelConfig(d_model=32, n_layer=2, vocab_size=TOK.vocab_size, ssm=SSMConfig(d_state=8),
                         layer_pattern=["mamba", "attention"])
    model = LanguageModel(config).double().eval()
    prompts = [TOK.encode("hybrid " + "w" * i) for i in range(5)]
    expected = [generate(model, [p], 9 + i, eos_token_id=TOK.eos_token_id).sequences[0] for i, p in enumerate(prompts)]
    scheduler = Scheduler(model, TOK, PrefixCache(model), Limits(max_prefill_tokens=5), bucketed=bucketed)
    requests = [Request(p, 9 + i) for i, p in enumerate(prompts)]
    for r in requests:  # arriving one step apart
        scheduler.submit([r])
        scheduler.step()
    scheduler.run_until_done(requests)
    assert [r.text.ids for r in requests] == expected


@pytest.mark.parametrize("max_prefill_tokens", [7, 64])
def test_a_shared_prefix_is_cached_in_memory_once_passed_and_resumed_from(tmp_path, max_prefill_tokens):
    """Requests sharing a system prompt: the first prefill to pass it keeps its state (in memory, not on
    disk), later requests resume from it, and every row's text is the one it gets with nothing cached."""
    model = byte_model()
    system = TOK.encode("[system]A shared system prompt of some length.</s>")
    prompts = [system + TOK.encode(f"[user]question {i}{'?' * i}</s>[assistant]") for i in range(4)]
    alone = [Engine(model, TOK).complete([p], 8)[0].text for p in prompts]
    engine = Engine(model, TOK, cache_dir=tmp_path, limits=Limits(max_prefill_tokens=max_prefill_tokens))
    first = [Request(p, 8, shared_prefix=len(system)) for p in prompts[:2]]  # together: both compute it
    engine.scheduler.submit(first)
    engine.scheduler.run_until_done(first)
    later = [Request(p, 8, shared_prefix=len(system)) for p in prompts[2:]]
    engine.scheduler.submit(later)
    engine.scheduler.run_until_done(later)
    assert [r.text.emitted for r in first + later] == alone
    assert [r.cached_tokens for r in first + later] == [0, 0, len(system), len(system)]
    assert list(tmp_path.iterdir()) == []  # clients' prefixes never reach the disk


def test_a_shared_prefix_the_cache_cannot_keep_costs_no_request(monkeypatch, caplog):
    model = byte_model()
    engine = Engine(model, TOK)
    prompt = TOK.encode("[system]S</s>[user]hello</s>[assistant]")
    (expected,) = engine.complete([prompt], 6)

    def refuse(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(engine.cache, "put", refuse)
    request = Request(prompt, 6, shared_prefix=len(TOK.encode("[system]S</s>")))
    engine.scheduler.submit([request])
    engine.scheduler.run_until_done([request])
    assert request.finish_reason in ("stop", "length") and request.text.emitted == expected.text
    assert "prompt tokens of request" in caplog.text and "no room" in caplog.text


@pytest.mark.parametrize("pattern", [None, ["mamba", "attention"]])
def test_a_cached_prompt_is_resumed_by_a_prompt_that_extends_it(pattern):
    """A conversation's next turn resumes from the state after the previous prompt (KV caches included)."""
    from mambalab import LanguageModel, ModelConfig, SSMConfig

    model = byte_model()
    if pattern is not None:
        config = ModelConfig(d_model=32, n_layer=2, vocab_size=TOK.vocab_size, ssm=SSMConfig(d_state=8),
                             layer_pattern=pattern)
        model = LanguageModel(config).double().eval()
    engine = Engine(model, TOK, limits=Limits(max_prefill_tokens=16))
    first = TOK.encode("[user]a first question, long enough for several chunks</s>[assistant]")
    turn = Request(first, 5, cache_prompt=True)
    engine.scheduler.submit([turn])
    engine.scheduler.run_until_done([turn])
    extended = first + TOK.encode(turn.text.emitted + "</s>[user]and a second one</s>[assistant]")
    (alone,) = Engine(model, TOK).complete([extended], 8)
    later = Request(extended, 8)
    engine.scheduler.submit([later])
    engine.scheduler.run_until_done([later])
    assert later.cached_tokens == len(first) and later.text.emitted == alone.text


@pytest.mark.parametrize("pattern", [None, ["mamba", "attention"]])
@pytest.mark.parametrize("bucketed", [False, True])
def test_forks_take_their_leaders_prefill_and_sample_their_own_tokens(pattern, bucketed):
    """n choices of one prompt: one prefill (the forks copy its state row and logits), and each choice's
    text is the one it gets alone with its seed."""
    from mambalab import LanguageModel, ModelConfig, SSMConfig

    torch.manual_seed(2)
    config = ModelConfig(d_model=32, n_layer=2, vocab_size=TOK.vocab_size, ssm=SSMConfig(d_state=8),
                         layer_pattern=pattern)
    model = LanguageModel(config).double().eval()
    prompt = TOK.encode("fork me " * 5)
    sampling = SamplingConfig(do_sample=True, temperature=1.2)
    alone = [Engine(model, TOK).complete([prompt], 10, seed=40 + j, **vars(sampling))[0].text for j in range(3)]
    scheduler = Scheduler(model, TOK, PrefixCache(model), Limits(max_prefill_tokens=16), bucketed=bucketed)
    leader = Request(prompt, 10, sampling, seed=40)
    choices = [leader] + [Request(prompt, 10, sampling, seed=40 + j, fork_of=leader) for j in (1, 2)]
    scheduler.submit(choices)
    scheduler.run_until_done(choices)
    assert [r.text.emitted for r in choices] == alone and len(set(alone)) == 3
    assert scheduler.stats.prefill_tokens == len(prompt)  # one prefill for the three


def test_forks_of_a_request_cancelled_mid_prefill_prefill_themselves():
    model = byte_model()
    prompt = TOK.encode("a long prompt " * 6)
    (alone,) = Engine(model, TOK).complete([prompt], 6)
    scheduler = Engine(model, TOK, limits=Limits(max_prefill_tokens=8)).scheduler
    leader = Request(prompt, 6)
    fork = Request(prompt, 6, fork_of=leader)
    scheduler.submit([leader, fork])
    scheduler.step()  # the leader has run one chunk of its prompt
    leader.cancel()
    scheduler.run_until_done([leader, fork])
    assert leader.finish_reason == "cancelled" and fork.text.emitted == alone.text


def test_a_fork_admitted_after_its_leaders_prefill_prefills_itself():
    """max_num_seqs = 2 with another request running: the second choice is admitted while the first decodes,
    and prefills itself at once instead of waiting for a prefill that is over."""
    model = byte_model()
    prompt = TOK.encode("one at a time")
    (alone,) = Engine(model, TOK).complete([prompt], 30)
    scheduler = Engine(model, TOK, limits=Limits(max_num_seqs=2)).scheduler
    other = Request(TOK.encode("x"), 3)
    scheduler.submit([other])
    scheduler.step()
    leader = Request(prompt, 30)
    fork = Request(prompt, 30, fork_of=leader)
    scheduler.submit([leader, fork])
    while not fork.started:
        scheduler.step()
    assert other.done.is_set() and not leader.done.is_set()  # admitted after its leader's prefill, not its end
    scheduler.run_until_done([leader, fork])
    assert leader.text.emitted == fork.text.emitted == alone.text
