"""`Engine`: a model, its tokenizer, a prefix cache and the continuous-batching `Scheduler` over them.

Used by the HTTP server (which runs the scheduler in its own thread, `start()`) and by `mambalab generate`
(which steps it in the calling thread). For every prompt the longest cached prefix is looked up and only the
rest is run (`PrefixCache`); new tokens are detokenized incrementally (`TextStream`), so text can be
streamed as it comes, and a request ends at EOS, at one of its stop strings, or at its max_new_tokens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mambalab.inference.prefix_cache import PrefixCache
from mambalab.inference.sampling import SamplingConfig
from mambalab.serve.scheduler import Limits, Request, Scheduler
from mambalab.serve.text import TextStream
from mambalab.tokenizer import load_tokenizer

__all__ = ["Completion", "Engine", "TextStream"]

logger = logging.getLogger(__name__)

UNLIMITED = 1 << 62


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_tokens: int
    completion_tokens: int


class Engine:
    """Model + tokenizer + prefix cache + scheduler. `complete` works with or without the scheduler thread.
    `limits` bound what a server accepts; by default (library use, `mambalab generate`) the context is
    unlimited. `state_dtype` is the SSM state dtype of every request (see `LanguageModel.allocate_state`)."""

    def __init__(self, model, tokenizer, cache_bytes: int = 1 << 30, cache_dir: str | Path | None = None,
                 limits: Limits | None = None, use_cuda_graph: bool = True, state_dtype=None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.cache = PrefixCache(model, max_bytes=cache_bytes, directory=cache_dir, state_dtype=state_dtype)
        limits = limits or Limits(max_model_len=UNLIMITED)  # library use: no context limit of a server
        self.scheduler = Scheduler(self.model, tokenizer, self.cache, limits, use_cuda_graph)

    @classmethod
    def from_dir(cls, model_dir: str | Path, device=None, dtype=None, **kwargs) -> Engine:
        """Load a checkpoint directory (`mambalab.load`) and its tokenizer (tokenizer.json
        when present, else bytes)."""
        from mambalab.models.pretrained import load

        return cls(load(model_dir, device=device, dtype=dtype), load_tokenizer(model_dir), **kwargs)

    @property
    def limits(self) -> Limits:
        return self.scheduler.limits

    @property
    def lock(self) -> threading.Lock:
        """Held while the scheduler steps: whoever else uses the model or the cache takes it."""
        return self.scheduler.lock

    def start(self) -> None:
        """Capture the decode steps (CUDA) and run the scheduler in its own thread (the server); `complete`
        then waits for it."""
        self.scheduler.warm_up()
        self.scheduler.start()

    def stop(self, drain_timeout: float = 0.0) -> None:
        self.scheduler.stop(drain_timeout)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def cache_prefix(self, tokens: list[int], pin: bool = False) -> None:
        """Run `tokens` once and keep their state, so prompts that start with them resume from it; `pin`
        keeps it in memory for good (the server's system prompt)."""
        with self.lock:
            self.cache.prefill(tokens, pin=pin)

    def complete(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        stop: list[str] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        seed: int | None = None,
        **sampling,
    ) -> list[Completion]:
        """Continue each token prompt; `on_text(row, delta)` receives text as it is settled. `sampling` holds
        SamplingConfig's options (do_sample, temperature, top_k, top_p, min_p, repetition_penalty); every row
        draws from its own generator seeded with `seed`. Raises RequestRejected (a ValueError) for a request
        the scheduler cannot take."""
        config = SamplingConfig(**sampling)
        progress = threading.Event()
        requests = [Request(list(p), max_new_tokens, config, seed, list(stop or []), on_update=progress.set)
                    for p in prompts]
        self.scheduler.submit(requests)
        threaded = self.scheduler.threaded
        while True:
            if threaded:
                progress.wait(0.5)
                progress.clear()
            else:
                self.scheduler.step()
            finished = True
            for row, r in enumerate(requests):
                text, done = r.drain()
                if text and on_text is not None:
                    on_text(row, text)
                finished &= done
            if finished:
                break
        failed = next((r for r in requests if r.error is not None), None)
        if failed is not None:
            raise RuntimeError(f"generation failed: {failed.error}")
        return [Completion(r.text.emitted, r.finish_reason, len(r.prompt), r.completion_tokens) for r in requests]
