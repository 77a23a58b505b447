"""`Scheduler`: continuous batching of recurrent states; one owner of the model, any number of requests.

A Mamba request's state has a fixed size, so every running request can share one decode step with no paged
KV cache. Each `step()`:
1. takes new submissions, drops cancelled and timed-out requests;
2. admits waiting requests while fewer than `max_num_seqs` are in flight: each starts from the longest
   cached prefix of its prompt (`PrefixCache`), else from a zero state. A request's `shared_prefix` (a
   chat's system prompt) that is not cached yet is cached, in memory only, when its prefill passes it, and
   with `cache_prompt` so is its whole prompt (the next turn of a conversation starts with it). A fork
   (another choice of the same prompt, `n` > 1) runs no prefill: it takes the prefilled state and the first
   logits of the request it forks;
3. prefills at most `max_prefill_tokens` prompt tokens in all, in chunks (so one long prompt cannot starve
   the decoding of the others); requests whose chunks have the same length run in one forward call. A
   request whose prompt is done chooses its first token from the last logits and joins the decode batch;
4. runs ONE decode step for every running request. On CUDA the batch is padded to a bucket of 1, 2, 4,
   8, ... rows, each bucket's step replayed from a CUDA graph; requests take free slots in place (one copy
   per state tensor for all the requests prefilled together), and the batch is rebuilt only to grow or to
   shrink when mostly empty. Elsewhere the batch is exactly the live rows, rebuilt when they change;
5. chooses each row's token on the device, with the row's own options and `torch.Generator` (greedy rows
   share one argmax), and reads the tokens on the host one step later: the text (`TextStream`), stop
   strings and finished rows of step t are handled while the device computes step t+1 (a row that
   finished is computed once more, for nothing, then its slot is freed).

The model is used only through its protocol: `model.prefill(ids, state)`, `model._step` through
`decode_step`, `model.allocate_state`, and `InferenceState` select / concat / clone; any model with these
(Mamba, Mamba-2, hybrids) is served.

Threads: `submit` and `Request.cancel` may be called from any thread; everything else runs in the thread
that calls `step()` (the scheduler thread started by `start()`, or the caller of `run_until_done`). Requests
receive their text through `Request.drain()`; the scheduler never waits for a reader: text waits in the
request (bounded by its max_new_tokens) and `on_update` only signals that there is some.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mambalab.errors import MambalabError
from mambalab.inference.cuda_graph import decode_step
from mambalab.inference.prefix_cache import PrefixCache
from mambalab.inference.sampling import SamplingConfig
from mambalab.inference.state import InferenceState
from mambalab.serve.metrics import ServerStats
from mambalab.serve.text import TextStream

logger = logging.getLogger(__name__)


@dataclass
class Limits:
    """What one server accepts. `max_model_len` bounds prompt + new tokens of a request; `max_num_seqs` the
    requests prefilling or decoding at once (the rest wait, at most `max_waiting`); `max_prefill_tokens`
    the prompt tokens run per scheduler step; `request_timeout` (s) the life of a request."""

    max_model_len: int = 32768
    max_num_seqs: int = 64
    max_prefill_tokens: int = 2048
    max_waiting: int = 1024
    request_timeout: float = 600.0

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_prefill_tokens", "max_waiting"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MambalabError(f"Limits.{name} must be an integer >= 1, got {value!r}")
        if not self.request_timeout > 0:
            raise MambalabError(f"Limits.request_timeout must be > 0 seconds, got {self.request_timeout!r}")


class RequestRejected(MambalabError):
    """A request the scheduler cannot take: `param` names the offending field, `status` the HTTP status
    (400 bad request, 429 too many waiting, 503 shutting down)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One prompt to continue. The scheduler fills the output side; readers call `drain()`."""

    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # keep generating past EOS (benchmarks: every request makes max_new_tokens)
    on_update: Callable[[], None] | None = None  # called (from the scheduler thread) when there is news
    streaming: bool = True  # on_update for each piece of text; False: only when the request ends
    shared_prefix: int = 0  # leading prompt tokens other requests share (a system prompt): their state is cached
    cache_prompt: bool = False  # cache the state after the whole prompt (a chat's next turn extends it)
    fork_of: Request | None = None  # another choice of the same prompt: take its prefilled state, no prefill
    id: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self) -> None:
        self.created = time.monotonic()
        self.finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "timeout" | "error"
        self.error: str | None = None
        self.first_token_time: float | None = None
        self.cached_tokens = 0  # prompt tokens resumed from the prefix cache
        self.text: TextStream | None = None  # set by the scheduler (it knows the tokenizer)
        self._cancelled = threading.Event()
        self._on_finish: Callable[[Request], None] | None = None  # the scheduler's stats, set by submit
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self.done = threading.Event()
        # Scheduler side: the state while prefilling, how many prompt tokens it has consumed, the row's
        # sampling generator and seen-token mask, the last chosen token.
        self.state: InferenceState | None = None
        self.state_row = 0  # this request's row of `state` (prefilled prompts share one state)
        self.consumed = 0
        self.cache_at = 0  # the prompt position whose state the prefix cache keeps (0: none)
        self.generator: torch.Generator | None = None
        self.seen: torch.Tensor | None = None  # (1, vocab) bool, only with a repetition penalty
        self.last_token = 0

    @property
    def started(self) -> bool:
        """Whether its first token has been chosen."""
        return self.first_token_time is not None

    @property
    def completion_tokens(self) -> int:
        return 0 if self.text is None else self.text.n_tokens

    @property
    def greedy(self) -> bool:
        """Argmax of the raw logits: rows like this share one batched argmax."""
        return not self.sampling.do_sample and self.sampling.repetition_penalty == 1.0

    def cancel(self) -> None:
        """Ask the scheduler to drop this request at its next step (safe from any thread)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def drain(self) -> tuple[str, bool]:
        """(text settled since the last call, whether the request has finished)."""
        with self._lock:
            text, self._pending = "".join(self._pending), []
            return text, self.done.is_set()

    # Scheduler side -------------------------------------------------------------------------------------
    def _emit(self, text: str, force: bool = False) -> None:
        if text:
            with self._lock:
                self._pending.append(text)
        if (text or force) and self.streaming:
            self._notify()

    def _finish(self, reason: str, error: str | None = None) -> None:
        if self.done.is_set():
            return
        if reason in ("stop", "length") and self.text is not None:
            tail = self.text.finish()
            if tail:
                with self._lock:
                    self._pending.append(tail)
        self.finish_reason, self.error = reason, error
        self.state = self.seen = self.generator = None
        self.done.set()
        if self._on_finish is not None:
            self._on_finish(self)
        self._notify()

    def _notify(self) -> None:
        if self.on_update is not None:
            try:
                self.on_update()
            except Exception:  # a reader's callback must never stop the scheduler
                logger.exception("request %d: on_update failed", self.id)


class Scheduler:
    """Continuous batching over one model; see the module docstring for one step."""

    def __init__(self, model, tokenizer, cache: PrefixCache, limits: Limits | None = None,
                 use_cuda_graph: bool = True, bucketed: bool | None = None):
        self.model, self.tokenizer, self.cache = model, tokenizer, cache
        self.limits = limits or Limits()
        self.use_cuda_graph = use_cuda_graph
        self.eos = tokenizer.eos_token_id
        self.lock = threading.Lock()  # held while stepping: the model and the cache are used by one thread
        self._submitted: deque[Request] = deque()
        self._waiting: deque[Request] = deque()
        self._prefilling: list[Request] = []
        self._joining: list[Request] = []  # prefilled, joining the batch at the next decode step
        self._forks: list[Request] = []  # admitted, waiting for the prefill of the request they fork
        # The decode batch: slot i of `_step`'s state holds request `_slots[i]` (None: free, computed for
        # nothing); `_tokens` (B,) are the next step's inputs; `_in_flight` the last launched step's rows and
        # chosen tokens, read on the host during the next step.
        # Pad the batch to 1, 2, 4, ... rows (one CUDA graph per size) and reuse free slots in place; by
        # default with CUDA graphs. Otherwise the batch is rebuilt with exactly the live rows at each change.
        self.bucketed = use_cuda_graph and model.device.type == "cuda" if bucketed is None else bucketed
        self._slots: list[Request | None] = []
        self._step = None
        self._tokens: torch.Tensor | None = None
        self._in_flight = None
        self._wake = threading.Event()
        self._accepting = True
        self._cancel_after = float("inf")  # set by drain(): when in-flight requests are cancelled
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.steps = 0  # decode steps run (for tests and logs)
        self.stats = ServerStats()  # what has been served, for /metrics

    # Any thread -----------------------------------------------------------------------------------------
    def check(self, prompt: list[int], max_new_tokens: int) -> None:
        """Raise RequestRejected when a request with this prompt and output length cannot be served."""
        vocab = self.model.config.vocab_size
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise RequestRejected(f"max_tokens must be an int >= 0, got {max_new_tokens!r}", "max_tokens")
        if not prompt:
            raise RequestRejected("the prompt is empty: it needs at least one token", "prompt")
        low, high = min(prompt), max(prompt)  # ints: the HTTP layer's strict types, or a tokenizer's output
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise RequestRejected(f"the prompt holds token id {bad} outside [0, {vocab})", "prompt")
        limit = self.limits.max_model_len
        if len(prompt) > limit:
            raise RequestRejected(f"the prompt has {len(prompt)} tokens; this server's maximum context length"
                                  f" (--max-model-len) is {limit}", "prompt")
        if max_new_tokens > limit - len(prompt):
            raise RequestRejected(f"max_tokens={max_new_tokens} with a {len(prompt)}-token prompt exceeds the"
                                  f" maximum context length {limit}: at most {limit - len(prompt)}", "max_tokens")

    def submit(self, requests: list[Request]) -> None:
        """Queue requests (all or none): RequestRejected when one is invalid, the queue is full, or the
        scheduler is shutting down."""
        for r in requests:
            self.check(r.prompt, r.max_new_tokens)
        if not self._accepting:
            raise RequestRejected("the server is shutting down", None, status=503)
        if len(self._submitted) + len(self._waiting) + len(requests) > self.limits.max_waiting:
            raise RequestRejected(f"too many requests waiting (at most {self.limits.max_waiting}); retry later",
                                  None, status=429)
        self.stats.submitted(len(requests))
        for r in requests:
            r.text = TextStream(self.tokenizer, r.stop, incremental=r.streaming)
            r._on_finish = self._record_finish
            self._submitted.append(r)
        self._wake.set()

    @property
    def threaded(self) -> bool:
        """Whether a scheduler thread (started by `start()`) is stepping."""
        return self._thread is not None

    @property
    def n_waiting(self) -> int:
        """Requests submitted and not yet admitted (safe to read from any thread)."""
        return len(self._submitted) + len(self._waiting)

    @property
    def n_in_flight(self) -> int:
        """Requests prefilling or decoding (read from another thread: a snapshot that may be a step old)."""
        return len(self._prefilling) + len(self._forks) + len(self._joining) + len(self._running())

    @property
    def busy(self) -> bool:
        return bool(self._submitted or self._waiting or self._prefilling or self._forks or self._joining
                    or self._running() or self._in_flight is not None)

    # The scheduler thread -------------------------------------------------------------------------------
    @torch.no_grad()
    def warm_up(self) -> None:
        """Capture the decode step of every batch bucket up to max_num_seqs now (CUDA graphs), so that no
        request waits for a capture later. Nothing to do when not bucketed."""
        if not self.bucketed:
            return
        with self.lock:
            for size in sorted({_bucket(n) for n in range(1, self.limits.max_num_seqs + 1)}):
                decode_step(self.model, self._allocate(size), self.use_cuda_graph)

    def start(self) -> None:
        """Run `step()` in a daemon thread until `stop()`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mambalab-scheduler", daemon=True)
            self._thread.start()

    def drain(self, timeout: float) -> None:
        """Stop admitting new requests; cancel those still in flight after `timeout` s (safe from a signal
        handler: it only sets flags)."""
        self._accepting = False
        self._cancel_after = time.monotonic() + timeout
        self._wake.set()

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop admitting; let in-flight requests finish for up to `drain_timeout` s; cancel the rest; join."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while self.busy and time.monotonic() < deadline and self._thread is not None:
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self.lock:
            self._fail_all("cancelled", "the server shut down")

    def run_until_done(self, requests: list[Request]) -> None:
        """Step in the calling thread until `requests` have finished (when no scheduler thread runs)."""
        while not all(r.done.is_set() for r in requests):
            self.step()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                worked = self.step()
            except Exception as e:  # a failed step fails its requests, never the server
                logger.exception("scheduler step failed")
                with self.lock:
                    self._fail_all("error", f"internal error: {type(e).__name__}: {e}")
                worked = True
            if not worked:
                self._wake.wait(0.5)

    @torch.no_grad()
    def step(self) -> bool:
        """One scheduling iteration; False when there was nothing to do."""
        with self.lock:
            self._take_submitted()
            self._drop_cancelled()
            self._admit()
            prefilled = self._prefill()
            decoded = self._decode()
            return prefilled or decoded

    def _take_submitted(self) -> None:
        while self._submitted:
            self._waiting.append(self._submitted.popleft())

    def _drop_cancelled(self) -> None:
        now = time.monotonic()
        timeout = self.limits.request_timeout

        def gone(r: Request) -> bool:
            if r.cancelled:
                r._finish("cancelled")
            elif now > self._cancel_after:
                r._finish("cancelled", "the server is shutting down")
            elif now - r.created > timeout:
                r._finish("timeout", f"the request ran past the server's timeout of {timeout:g} s")
            return r.done.is_set()

        self._waiting = deque(r for r in self._waiting if not gone(r))
        self._prefilling = [r for r in self._prefilling if not gone(r)]
        self._forks = [r for r in self._forks if not gone(r)]
        self._joining = [r for r in self._joining if not gone(r)]
        for r in self._running():
            gone(r)  # its slot is freed at the next decode step

    def _fail_all(self, reason: str, error: str) -> None:
        for group in (self._submitted, self._waiting, self._prefilling, self._forks, self._joining, self._running()):
            for r in group:
                r._finish(reason, error)
        self._submitted.clear()
        self._waiting.clear()
        self._prefilling, self._forks, self._joining = [], [], []
        self._slots, self._step, self._tokens, self._in_flight = [], None, None, None

    def _running(self) -> list[Request]:
        return [r for r in self._slots if r is not None and not r.done.is_set()]

    def _admit(self) -> None:
        self._release_orphaned_forks()
        while self._waiting and self.n_in_flight < self.limits.max_num_seqs:
            r = self._waiting.popleft()
            if r.max_new_tokens == 0:
                r._finish("length")
                continue
            device = self.model.device
            r.generator = torch.Generator(device=device)
            r.generator.manual_seed(r.seed if r.seed is not None else random.getrandbits(63))
            if r.sampling.repetition_penalty != 1.0:
                r.seen = torch.zeros(1, self.model.config.vocab_size, dtype=torch.bool, device=device)
                r.seen[0, torch.tensor(r.prompt, device=device)] = True
            if r.fork_of is not None and any(p is r.fork_of for p in self._prefilling):
                self._forks.append(r)  # its whole prompt comes from the request it forks
                continue
            self._start_prefill(r)

    def _start_prefill(self, r: Request) -> None:
        r.cached_tokens, r.state = self.cache.lookup(r.prompt)  # None: start from zeros
        self.stats.admitted(len(r.prompt), r.cached_tokens)
        r.consumed = r.cached_tokens
        if r.cached_tokens < r.shared_prefix < len(r.prompt):  # a shared prefix not cached yet
            r.cache_at = r.shared_prefix
        self._prefilling.append(r)

    def _release_orphaned_forks(self) -> None:
        """Forks of a request that ended before its prefill did (cancelled, timed out) prefill themselves. (A
        fork admitted after its request's prefill, `max_num_seqs` reached, prefills itself at once.)"""
        orphans = [r for r in self._forks if r.fork_of.done.is_set()]
        if orphans:
            self._forks = [r for r in self._forks if not r.fork_of.done.is_set()]
            for r in orphans:
                self._start_prefill(r)

    def _take_forks(self, leader: Request) -> list[Request]:
        forks = [r for r in self._forks if r.fork_of is leader]
        if forks:
            self._forks = [r for r in self._forks if r.fork_of is not leader]
        return forks

    # Prefill ----------------------------------------------------------------------------------------------
    def _prefill(self) -> bool:
        """Run up to max_prefill_tokens prompt tokens, oldest requests first; same-length chunks together."""
        budget = self.limits.max_prefill_tokens
        groups: dict[int, list[Request]] = defaultdict(list)
        for r in self._prefilling:
            if budget == 0:
                break
            n = min(len(r.prompt) - r.consumed, budget)
            if r.consumed < r.cache_at:  # a chunk ends where the shared prefix does
                n = min(n, r.cache_at - r.consumed)
            groups[n].append(r)
            budget -= n
        for n, members in groups.items():
            self._prefill_group(n, members)
        self._prefilling = [r for r in self._prefilling if r.consumed < len(r.prompt)]
        return bool(groups)

    def _prefill_group(self, n: int, members: list[Request]) -> None:
        ids = torch.tensor([r.prompt[r.consumed : r.consumed + n] for r in members],
                           dtype=torch.long, device=self.model.device)  # (g, n)
        if all(r.state is None for r in members):
            state = None  # all start from zeros: prefill allocates them at once
        else:
            states = [r.state if r.state is not None else self._allocate(1) for r in members]
            state = states[0] if len(states) == 1 else InferenceState.concat(states)
        logits, state = self.model.prefill(ids, state, state_dtype=self.cache.state_dtype)
        self.stats.prefilled(ids.numel())
        for i, r in enumerate(members):
            r.consumed += n
            if r.consumed == r.cache_at:
                self._keep_state(r, r.cache_at, state if len(members) == 1 else state.select([i]))
        done = [i for i, r in enumerate(members) if r.consumed == len(r.prompt)]
        for i, r in enumerate(members):
            if r.consumed < len(r.prompt):  # more chunks to come: a state of its own
                r.state, r.state_row = (state, 0) if len(members) == 1 else (state.select([i]), 0)
        if done:
            shared = state if len(done) == len(members) else state.select(done)
            self._prompts_done([members[i] for i in done], shared, logits[done, -1])

    def _prompts_done(self, finished: list[Request], shared: InferenceState, last_logits: torch.Tensor) -> None:
        """Requests whose prompts are done share one state (`shared`, row i for finished[i]), written into the
        decode batch together; their forks take the same rows (copied when written) and logits (f, vocab)."""
        forks, rows = [], list(range(len(finished)))
        for row, r in enumerate(finished):
            r.state, r.state_row = shared, row
            if r.cache_prompt:
                self._keep_state(r, len(r.prompt), shared if len(finished) == 1 else shared.select([row]))
            for fork in self._take_forks(r):
                fork.state, fork.state_row, fork.cached_tokens = shared, row, len(fork.prompt)
                self.stats.admitted(len(fork.prompt), len(fork.prompt))
                forks.append(fork)
                rows.append(row)
        if forks:
            last_logits = last_logits[torch.tensor(rows, device=last_logits.device)]
        self._first_tokens(finished + forks, last_logits)

    def _record_finish(self, r: Request) -> None:
        self.stats.request_finished(r.finish_reason, r.completion_tokens, time.monotonic() - r.created)

    def _keep_state(self, r: Request, n: int, state: InferenceState) -> None:
        """Keep `state`, the state after `r`'s first `n` prompt tokens, in the cache's memory (not on disk:
        clients must not fill it), so later requests that start with those tokens resume from it. Never fails
        the request."""
        try:
            if r.prompt[:n] not in self.cache:  # (another request with these tokens may have kept it)
                self.cache.put(r.prompt[:n], state, persist=False)
        except Exception as e:  # noqa: BLE001 - a cache that cannot keep it costs speed, not the answer
            logger.warning("prefix cache: %d prompt tokens of request %d are not cached: %s", n, r.id, e)

    def _allocate(self, rows: int) -> InferenceState:
        """Zero states for `rows` requests, with the prefix cache's SSM state dtype: every state of the batch
        (cached, prefilled, padding) holds that one, so they join."""
        return self.model.allocate_state(rows, state_dtype=self.cache.state_dtype)

    def _first_tokens(self, requests: list[Request], logits: torch.Tensor) -> None:
        now = time.monotonic()
        for r, token in zip(requests, self._choose(requests, logits).tolist()):
            if r.done.is_set():  # its choice failed
                continue
            r.first_token_time = now
            self.stats.first_token(now - r.created)
            if not self._accept_token(r, token):
                self._joining.append(r)

    # Decode -----------------------------------------------------------------------------------------------
    def _decode(self) -> bool:
        """Launch one batched decode step over the slots, then do the host work of the previous step (text,
        stop strings, finishing) while the device computes this one. A row that finished in the previous
        step has been computed once more for nothing; it leaves at the next step."""
        self._update_slots()
        previous, self._in_flight = self._in_flight, None
        if self._step is not None:
            logits = self._step(self._tokens)  # (B, vocab); free slots are computed and ignored
            self.steps += 1
            chosen = self._choose(self._slots, logits)  # (B,) on the device
            self._in_flight = (list(self._slots), _HostCopy(chosen))
            self._tokens = chosen
        if previous is not None:
            slots, copy = previous
            for r, token in zip(slots, copy.get()):
                if r is not None and not r.done.is_set():
                    self._accept_token(r, token)
        return self._step is not None or previous is not None

    def _update_slots(self) -> None:
        """Free the slots of finished rows and give the joining requests one each: in place when the batch
        has room (bucketed CUDA graphs), else by building a new batch of live rows + joiners."""
        if not self._joining and not any(r is not None and r.done.is_set() for r in self._slots):
            return  # nothing joins, nothing left
        live = [i for i, r in enumerate(self._slots) if r is not None and not r.done.is_set()]
        joining = _by_state(self._joining)
        self._joining = []
        rows = len(live) + sum(len(group) for _, group in joining)
        if rows == 0:
            self._slots, self._step, self._tokens = [], None, None
            return
        capacity = len(self._slots)
        taken = set(live)
        free = [i for i in range(capacity) if i not in taken]
        fits = all(_fits(self._step.state, state) for state, _ in joining) if self._step is not None else False
        if self.bucketed and fits and rows <= capacity and (capacity == 1 or rows > capacity // 4):
            for i in free:
                self._slots[i] = None
            for state, group in joining:
                placed, free = free[: len(group)], free[len(group) :]
                _write_rows(self._step.state, placed, state, [r.state_row for r in group])
                tokens = torch.tensor([r.last_token for r in group], device=self._tokens.device)
                self._tokens[torch.tensor(placed, device=self._tokens.device)] = tokens
                for i, r in zip(placed, group):
                    self._slots[i], r.state = r, None
            return
        self._rebuild(live, joining)

    def _rebuild(self, live: list[int], joining: list[tuple[InferenceState, list[Request]]]) -> None:
        """A new decode batch: the rows `live` of the current one, then the joining requests (grouped by the
        state that holds their rows), padded to a bucket."""
        device = self.model.device
        parts = [self._step.state.select(live)] if live else []
        joiners = []
        for state, group in joining:
            rows_of_group = [r.state_row for r in group]
            parts.append(state if rows_of_group == list(range(state.batch_size)) else state.select(rows_of_group))
            joiners += group
        rows = len(live) + len(joiners)
        size = _bucket(rows) if self.bucketed else rows
        if size > rows:
            parts.append(self._allocate(size - rows))
        state = parts[0] if len(parts) == 1 else InferenceState.concat(parts)
        tokens = torch.zeros(size, dtype=torch.long, device=device)  # (B,)
        if live:
            tokens[: len(live)] = self._tokens[torch.tensor(live, device=self._tokens.device)]
        if joiners:
            tokens[len(live) : rows] = torch.tensor([r.last_token for r in joiners], device=device)
        self._slots = [self._slots[i] for i in live] + joiners + [None] * (size - rows)
        for r in joiners:
            r.state = None
        self._step = decode_step(self.model, state, self.use_cuda_graph)
        self._tokens = tokens

    # Choosing tokens --------------------------------------------------------------------------------------
    def _choose(self, rows: list[Request | None], logits: torch.Tensor) -> torch.Tensor:
        """logits (b, vocab) -> each row's next token (b,) on the device, by the row's own options and
        generator: one argmax for all, then a draw (or penalised argmax) for each row that asks for one."""
        chosen = logits.argmax(-1)  # (b,)
        for i, r in enumerate(rows):
            if r is not None and not r.greedy and not r.done.is_set():
                try:
                    token = r.sampling.choose(logits[i : i + 1], r.seen, r.generator)  # (1,)
                except Exception as e:  # one request's options must never fail the others' step
                    logger.exception("request %d: choosing its next token failed", r.id)
                    r._finish("error", f"internal error: {type(e).__name__}: {e}")
                    continue
                if r.seen is not None:
                    r.seen[0].index_fill_(0, token, True)
                chosen[i : i + 1] = token
        return chosen

    def _accept_token(self, r: Request, token: int) -> bool:
        """Hand the token's text to the request; True (and the request finished) when it is its last."""
        r.last_token = token
        first = r.text.n_tokens == 0
        r._emit(r.text.push(token), force=first)  # readers learn of the first token even when it has no text
        if r.text.stopped or (token == self.eos and not r.ignore_eos):
            r._finish("stop")
        elif r.text.n_tokens >= r.max_new_tokens:
            r._finish("length")
        return r.done.is_set()


def _bucket(rows: int) -> int:
    """The batch size a decode step of `rows` rows runs at on CUDA (one captured graph per bucket)."""
    return 1 << max(0, rows - 1).bit_length()


def _fits(batch: InferenceState, source: InferenceState) -> bool:
    """Whether rows of `source` can be written into rows of `batch` (same tensors, same shapes past the batch)."""
    return all(
        static.keys() == layer.keys() and all(static[k].shape[1:] == t.shape[1:] for k, t in layer.items())
        for static, layer in zip(batch.layers, source.layers)
    )


def _write_rows(batch: InferenceState, slots: list[int], source: InferenceState, rows: list[int]) -> None:
    """Copy rows `rows` of `source` into rows `slots` of `batch`, in place (its buffers may be a CUDA
    graph's): one copy per tensor, whatever the number of rows."""
    dst = torch.tensor(slots, device=batch.device)
    src = torch.tensor(rows, device=source.device)
    for static, layer in zip(batch.layers, source.layers):
        for key, t in layer.items():
            static[key].index_copy_(0, dst, t.index_select(0, src))
    batch.seqlen.index_copy_(0, dst, source.seqlen.index_select(0, src))


def _by_state(requests: list[Request]) -> list[tuple[InferenceState, list[Request]]]:
    """Requests grouped by the state object holding their rows, in order of first appearance."""
    groups: dict[int, tuple[InferenceState, list[Request]]] = {}
    for r in requests:
        groups.setdefault(id(r.state), (r.state, []))[1].append(r)
    return list(groups.values())


class _HostCopy:
    """A device tensor's values on the host: copied now (asynchronously on CUDA, so the host can work while
    the device computes), read by `get()`."""

    def __init__(self, tensor: torch.Tensor):
        self.ready = None
        if tensor.device.type == "cuda":
            self.values = tensor.to("cpu", non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.values = tensor.tolist()

    def get(self) -> list[int]:
        if self.ready is None:
            return self.values
        self.ready.synchronize()
        return self.values.tolist()
