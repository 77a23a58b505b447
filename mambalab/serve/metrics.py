"""`ServerStats`: what a scheduler has served (counters, latency histograms), and its Prometheus text (`/metrics`).

Counters only grow, from the scheduler's start: requests received and finished (by reason), prompt tokens
(resumed from the prefix cache, and run through prefill), generated tokens, decode steps. Histograms: time to
first token and request latency (from submission). `render` adds the gauges read at scrape time: requests
waiting and in flight, the prefix cache's entries, bytes, hits and misses.
"""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PREFIX = "mambalab_"


class Histogram:
    """A cumulative-bucket histogram of seconds, in Prometheus' layout."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # observations <= buckets[i] (not yet cumulative)
        self.count, self.sum = 0, 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.count += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class ServerStats:
    """Updated by the scheduler (and `submit`, from any thread); read by `render`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.finished: Counter[str] = Counter()  # by finish reason
        self.prompt_tokens = self.cached_prompt_tokens = self.prefill_tokens = self.generated_tokens = 0
        self.ttft = Histogram()
        self.latency = Histogram()

    def submitted(self, n: int) -> None:
        with self._lock:
            self.received += n

    def admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.cached_prompt_tokens += cached_tokens

    def prefilled(self, tokens: int) -> None:
        with self._lock:
            self.prefill_tokens += tokens

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def request_finished(self, reason: str, generated: int, seconds: float) -> None:
        with self._lock:
            self.finished[reason] += 1
            self.generated_tokens += generated
            self.latency.observe(seconds)

    def render(self, scheduler, cache) -> str:
        """The Prometheus text exposition (format 0.0.4) of these counters and the current gauges."""
        with self._lock:
            metrics = [
                ("requests_received_total", "counter", "Requests submitted.", [f"{self.received}"]),
                ("requests_finished_total", "counter", "Requests finished, by reason.",
                 [f'{{reason="{r}"}} {n}' for r, n in sorted(self.finished.items())]),
                ("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", [f"{self.prompt_tokens}"]),
                ("prompt_tokens_cached_total", "counter", "Prompt tokens resumed from the prefix cache.",
                 [f"{self.cached_prompt_tokens}"]),
                ("prefill_tokens_total", "counter", "Prompt tokens run through prefill.", [f"{self.prefill_tokens}"]),
                ("generation_tokens_total", "counter", "Tokens generated.", [f"{self.generated_tokens}"]),
                ("decode_steps_total", "counter", "Batched decode steps.", [f"{scheduler.steps}"]),
                ("requests_waiting", "gauge", "Requests queued, not yet admitted.", [f"{scheduler.n_waiting}"]),
                ("requests_running", "gauge", "Requests prefilling or decoding.", [f"{scheduler.n_in_flight}"]),
                ("prefix_cache_entries", "gauge", "Cached prefix states (memory and disk).", [f"{len(cache)}"]),
                ("prefix_cache_bytes", "gauge", "Bytes of prefix states in memory.", [f"{cache.nbytes}"]),
                ("prefix_cache_hits_total", "counter", "Lookups that found a cached prefix.", [f"{cache.hits}"]),
                ("prefix_cache_misses_total", "counter", "Lookups that found none.", [f"{cache.misses}"]),
            ]
            lines = []
            for name, kind, help_, samples in metrics:
                lines += [f"# HELP {PREFIX}{name} {help_}", f"# TYPE {PREFIX}{name} {kind}"]
                lines += [f"{PREFIX}{name}{'' if s.startswith('{') else ' '}{s}" for s in samples]
            for name, help_, histogram in (("time_to_first_token_seconds", "Submission to first token.", self.ttft),
                                           ("request_latency_seconds", "Submission to finish.", self.latency)):
                lines += [f"# HELP {PREFIX}{name} {help_}", f"# TYPE {PREFIX}{name} histogram"]
                lines += histogram.lines(PREFIX + name)
        return "\n".join(lines) + "\n"
