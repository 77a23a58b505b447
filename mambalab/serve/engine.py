"""`Engine`: a model, its tokenizer and a prefix cache behind one lock; text in, text out.

Used by the HTTP server and by `mambalab generate`. For every prompt the longest cached prefix is looked
up and only the rest is run (`PrefixCache`); the new tokens are detokenized incrementally (`TextStream`), so
text can be streamed as it comes, and generation ends early when every row has hit one of its stop strings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mambalab.inference.generate import generate
from mambalab.inference.prefix_cache import PrefixCache
from mambalab.inference.state import InferenceState

logger = logging.getLogger(__name__)


class TextStream:
    """Turns one row's tokens into text deltas. Text that could still become a stop string, or an
    incomplete multi-byte character (decoded as U+FFFD), is held back until it is settled."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer, self.stop = tokenizer, [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.emitted = ""  # text already handed out
        self.stopped = False  # a stop string was produced; nothing more is emitted

    def push(self, token: int) -> str:
        """Add a token; return the new text that is now certain (may be empty)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self._decode()
        cut = min((i for i in (text.find(s, max(0, len(self.emitted) - len(s))) for s in self.stop) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            return self._advance(text[:cut])
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        settled = text[: len(text) - hold]
        return self._advance(settled.rstrip("\ufffd") if settled.endswith("\ufffd") else settled)

    def finish(self) -> str:
        """The text held back so far (the generation has ended without a stop string)."""
        return "" if self.stopped else self._advance(self._decode())

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def _decode(self) -> str:
        vocab = self.tokenizer.vocab_size  # a model may have more rows than its tokenizer: skip those
        return self.tokenizer.decode([i for i in self.ids if i < vocab])

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted) or len(text) <= len(self.emitted):
            return ""
        delta, self.emitted = text[len(self.emitted) :], text
        return delta


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_tokens: int
    completion_tokens: int


class _AllStopped(Exception):
    """Raised from the streamer to end generation once every row has produced a stop string."""


class Engine:
    """Model + tokenizer + prefix cache; `complete` is serialised by `lock` (one generation at a time)."""

    def __init__(self, model, tokenizer, cache_bytes: int = 1 << 30, cache_dir: str | Path | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.cache = PrefixCache(model, max_bytes=cache_bytes, directory=cache_dir)
        self.lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir: str | Path, device=None, dtype=None, **kwargs) -> Engine:
        """Load a checkpoint directory (`mambalab.models.checkpoint.load`) and its tokenizer (tokenizer.json
        when present, else bytes)."""
        from mambalab.models.checkpoint import load
        from mambalab.tokenizer import load_tokenizer

        return cls(load(model_dir, device=device, dtype=dtype), load_tokenizer(model_dir), **kwargs)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def cache_prefix(self, tokens: list[int]) -> None:
        """Run `tokens` once and keep their state, so prompts that start with them resume from it."""
        with self.lock:
            self.cache.prefill(tokens)

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
        generate()'s options (do_sample, temperature, top_k, top_p, min_p, repetition_penalty)."""
        streams = [TextStream(self.tokenizer, stop) for _ in prompts]

        def streamer(row: int, token: int) -> None:
            delta = streams[row].push(token)
            if delta and on_text is not None:
                on_text(row, delta)
            if all(s.stopped for s in streams):
                raise _AllStopped

        with self.lock:
            starts, state = self._resume(prompts)
            generator = None
            if seed is not None:
                generator = torch.Generator(device=self.model.device).manual_seed(seed)
            eos = self.tokenizer.eos_token_id
            try:
                result = generate(
                    self.model, [p[n:] for p, n in zip(prompts, starts)], max_new_tokens, eos_token_id=eos,
                    generator=generator, state=state, streamer=streamer, **sampling,
                )
                reasons = result.finish_reasons
            except _AllStopped:
                reasons = ["stop"] * len(prompts)
        completions = []
        for row, (stream, reason) in enumerate(zip(streams, reasons)):
            tail = stream.finish()
            if tail and on_text is not None:
                on_text(row, tail)
            reason = "stop" if stream.stopped else reason
            completions.append(Completion(stream.emitted, reason, len(prompts[row]), stream.n_tokens))
        return completions

    def _resume(self, prompts: list[list[int]]) -> tuple[list[int], InferenceState | None]:
        """How many tokens of each prompt the cache covers, and the joined states to start from."""
        found = [self.cache.lookup(p) for p in prompts]
        if all(state is None for _, state in found):
            return [0] * len(prompts), None
        states = [state if state is not None else self.model.allocate_state(1) for _, state in found]
        return [n for n, _ in found], InferenceState.concat(states)
