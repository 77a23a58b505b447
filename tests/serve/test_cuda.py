"""The scheduler on CUDA: CUDA graphs per batch bucket, rows written into captured buffers in place, tokens
read one step late; every row as `generate` gives it alone (float32: a batch size could flip a near-tie of
the random model's logits, which differ by far more than float32 rounding here)."""

from __future__ import annotations

import pytest
import torch

from mambalab.inference.generate import generate
from mambalab.inference.prefix_cache import PrefixCache
from mambalab.inference.sampling import SamplingConfig
from mambalab.serve.engine import Engine
from mambalab.serve.scheduler import Limits, Request, Scheduler
from tests.serve.conftest import TOK, byte_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_graph_buckets_keep_every_rows_tokens():
    model = byte_model().float().cuda()
    lengths = [3, 17, 9, 30, 5, 12, 25, 2, 8, 40, 6]
    prompts = [TOK.encode(f"cuda {i} " + "k" * (2 * i)) for i in range(len(lengths))]
    expected = [generate(model, [p], n, eos_token_id=TOK.eos_token_id).sequences[0]
                for p, n in zip(prompts, lengths)]
    scheduler = Scheduler(model, TOK, PrefixCache(model), Limits(max_num_seqs=6, max_prefill_tokens=8))
    assert scheduler.bucketed
    scheduler.warm_up()
    requests = [Request(p, n) for p, n in zip(prompts, lengths)]
    for r in requests:  # arriving one step apart: joins into free slots, growth and shrinking of the batch
        scheduler.submit([r])
        scheduler.step()
    scheduler.run_until_done(requests)
    assert [r.text.ids for r in requests] == expected


def test_seeded_sampling_alone_or_batched_on_cuda():
    model = byte_model().float().cuda()
    engine = Engine(model, TOK)
    prompts = [TOK.encode(f"seeded {i}") for i in range(5)]
    sampling = {"do_sample": True, "temperature": 0.9, "top_k": 30}
    alone = [engine.complete([p], 12, seed=11, **sampling)[0].text for p in prompts]
    requests = [Request(p, 12, SamplingConfig(**sampling), seed=11) for p in prompts]
    engine.scheduler.submit(requests)
    engine.scheduler.run_until_done(requests)
    assert [r.text.emitted for r in requests] == alone
