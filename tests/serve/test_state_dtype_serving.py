"""Serving with a 16-bit SSM state (`mambalab serve --state-dtype`): every state of the decode batch (cached
prefixes, prefilled prompts, padding rows) holds that dtype, and each row gets the text it gets alone."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from mambalab.cli import app
from mambalab.inference.generate import generate
from mambalab.inference.prefix_cache import PrefixCache
from mambalab.models.pretrained import save_pretrained
from mambalab.serve.engine import Engine
from mambalab.serve.scheduler import Limits, Request, Scheduler
from tests.serve.conftest import TOK, byte_model


def test_bucketed_batches_of_bf16_states_keep_each_rows_tokens():
    """A float64 model with bf16 SSM states (so batching changes no rounding): requests in two waves; the first
    three prefilled together, two resuming from a cached prefix beside one from a zero state, then joining the
    batch together (3 rows padded to 4); each row's greedy text is the one it gets alone, which is
    `generate`'s with the same state dtype."""
    model = byte_model()
    prefix = TOK.encode("shared context: ")
    prompts = [prefix + TOK.encode("row a"), prefix + TOK.encode("row b"), TOK.encode("zzzzz"), TOK.encode("x" * 23)]
    alone = Engine(model, TOK, state_dtype="bfloat16")
    expected = [alone.complete([p], 7)[0].text for p in prompts]
    assert expected[0] == TOK.decode(generate(model, [prompts[0]], 7, eos_token_id=TOK.eos_token_id,
                                              state_dtype="bfloat16").sequences[0])
    cache = PrefixCache(model, state_dtype="bfloat16")
    cache.prefill(prefix)
    scheduler = Scheduler(model, TOK, cache, Limits(max_num_seqs=4, max_prefill_tokens=64), bucketed=True)
    requests = [Request(p, 7) for p in prompts]
    scheduler.submit(requests[:3])
    scheduler.step()
    scheduler.step()
    assert len(scheduler._slots) == 4 and scheduler._slots[3] is None  # a padding row
    assert scheduler._step.state.ssm_dtype == torch.bfloat16
    scheduler.submit(requests[3:])
    scheduler.run_until_done(requests)
    assert [r.text.emitted for r in requests] == expected
    assert cache.hits >= 2


@pytest.mark.parametrize("value", ["bfloat16", "model"])
def test_serve_passes_state_dtype_to_the_engine(tmp_path, monkeypatch, value):
    from mambalab.serve import server

    pytest.importorskip("fastapi")
    seen = {}
    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: seen.update(kwargs))
    save_pretrained(byte_model(), tmp_path / "model")
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "model"), "--device", "cpu", "--state-dtype", value])
    assert result.exit_code == 0, result.output
    assert seen["state_dtype"] == value


def test_serve_refuses_a_bad_state_dtype_in_one_line(tmp_path):
    pytest.importorskip("fastapi")
    save_pretrained(byte_model(), tmp_path / "model")
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "model"), "--state-dtype", "int8"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --state-dtype must be one of") and "'int8'" in lines[0]
