"""benchmarks/serve_load.py's client driver against the test server: runs start only after every client is
connected, and a failing client fails the run instead of hanging it."""

from __future__ import annotations

import pytest

from benchmarks import serve_load
from tests.serve.conftest import MODEL_NAME


def specs(clients: int, rounds: int, max_tokens: int) -> list[list[dict]]:
    return [[{"kind": "completion", "model": MODEL_NAME, "max_tokens": max_tokens, "prompt": [72 + c, 105, 33]}
             for _ in range(rounds)] for c in range(clients)]


def test_load_runs_every_request_of_every_repeat_and_reports_the_clients_start(served):
    result = serve_load.load(served.url, specs(clients=4, rounds=2, max_tokens=3), procs=2, repeats=2)
    assert result["requests"] == 8 and result["tokens"] == 24
    assert len(result["tokens_per_s_of_each_run"]) == 2 == len(result["client_start_spread_s_of_each_run"])
    assert 0 <= result["client_start_spread_s"] < 0.5  # released together, not spread over their start-up
    assert result["clients_ready_s"] > 0 and result["ttft_p50_s"] <= result["latency_p50_s"]


def test_summarize_spread_is_between_each_clients_first_request():
    records = [{"client": c, "start": start, "first": None, "end": start + 1, "tokens": 2}
               for c, start in ((0, 10.0), (0, 10.5), (1, 10.2), (2, 10.1))]
    summary = serve_load.summarize(records)
    assert summary["client_start_spread_s"] == pytest.approx(0.2)
    assert summary["wall_s"] == pytest.approx(1.5) and summary["tokens"] == 8


def test_a_failing_client_fails_the_run(served):
    bad = specs(clients=3, rounds=1, max_tokens=2)
    bad[1][0]["max_tokens"] = 10**6  # past --max-model-len: a 400 after the warm-up, inside the run
    with pytest.raises(RuntimeError, match="1 client"):
        serve_load.load(served.url, bad, procs=2, repeats=1)
