"""`PrefixCache`: states of token prefixes (system prompts, shared context), found by longest prefix match.

A Mamba state has a fixed size whatever the prefix length, so resuming from a cached prefix costs the same
for a 100-token and a 100,000-token prefix. Entries are batch-1 states keyed by the exact tokens they have
consumed. In memory they form an LRU bounded in bytes (pinned entries stay outside it); with a `directory`,
every entry is also written there unless put as memory-only (atomically, with the model's fingerprint, see
`InferenceState.save`), entries evicted from memory are reloaded from disk on demand, and a new cache over the
same directory (another process) finds them again.
All states of one cache hold their SSM states in its `state_dtype` (inference/state_dtype.py). Files from
another model, dtype or SSM state dtype are ignored; a corrupt, crafted or unreadable file is skipped (or, found
bad when loaded, dropped and treated as a miss) with a warning naming it.

Not thread-safe: callers that share one cache between threads serialise access (the server holds a lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mambalab.errors import InputError
from mambalab.inference.generate import prefill
from mambalab.inference.state import (
    CorruptStateError,
    InferenceState,
    model_fingerprint,
    read_state_metadata,
    recorded_state_dtype,
    tokens_hash,
)
from mambalab.inference.state_dtype import check_state_holds, default_state_dtype, resolve_state_dtype

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    path: Path | None = None  # its file when the cache has a directory


class PrefixCache:
    """States of token prefixes for one model: `put`, `lookup` (longest cached prefix), `prefill`."""

    def __init__(self, model, max_bytes: int = 1 << 30, directory: str | Path | None = None, state_dtype=None):
        if max_bytes < 0:
            raise InputError(f"max_bytes must be >= 0, got {max_bytes}")
        self.model, self.max_bytes = model, max_bytes
        self.state_dtype = resolve_state_dtype(state_dtype, model.dtype)  # of every cached state's SSM states
        self.directory = None if directory is None else Path(directory)
        self._entries: dict[tuple[int, ...], _Entry] = {}
        self._memory: OrderedDict[tuple[int, ...], InferenceState] = OrderedDict()  # LRU order, oldest first
        self._bytes = 0
        self._pinned: set[tuple[int, ...]] = set()  # kept in memory whatever max_bytes says
        self.hits = self.misses = 0  # lookups that found a cached prefix / found none
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._index_directory()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens) -> bool:
        """Whether the state after exactly `tokens` is cached (in memory or on disk)."""
        return _key(tokens) in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes of the states held in memory."""
        return self._bytes

    def put(self, tokens, state: InferenceState, persist: bool = True, pin: bool = False) -> None:
        """Cache `state` (batch 1) as the state after exactly `tokens`. `persist=False` keeps it in memory
        only, also in a cache with a directory (what clients send: they must not fill the disk); `pin` keeps
        it in memory for the cache's life, never evicted (the server's own system prompt)."""
        key = _key(tokens)
        check_state_holds(state, self.state_dtype, self.model.dtype)
        if state.batch_size != 1 or int(state.seqlen[0]) != len(key):
            raise InputError(
                f"state: expected a batch-1 state that has consumed the {len(key)} given tokens, got batch"
                f" {state.batch_size} with seqlen {state.seqlen.tolist()}"
            )
        entry = self._entries.get(key) or _Entry(key)
        if persist and self.directory is not None and entry.path is None:
            path = self.directory / f"{self._file_stem(key)}.safetensors"
            state.save(path, self.model, prefix_tokens=list(key))  # a failed write registers nothing
            entry.path = path
        self._entries[key] = entry
        if pin:
            self._pinned.add(key)
        self._remember(key, state.clone())

    def lookup(self, tokens) -> tuple[int, InferenceState | None]:
        """(n, state) for the longest cached prefix tokens[:n] with n < len(tokens) (at least one token is
        left to run, whose logits start generation); (0, None) when none is cached. The state is a copy."""
        key = _key(tokens)
        candidates = sorted((k for k in self._entries if len(k) < len(key) and key[: len(k)] == k), key=len)
        while candidates:
            best = candidates.pop()
            state = self._state(best)
            if state is not None:
                self.hits += 1
                return len(best), state
        self.misses += 1
        return 0, None

    def prefill(self, tokens, pin: bool = False) -> InferenceState:
        """The state after `tokens`: from the cache when cached, else computed (resuming from the longest
        cached prefix) and cached; `pin` as in `put`."""
        key = _key(tokens)
        if pin:  # before `_state` reads it from disk into memory, so that this read cannot evict it
            self._pinned.add(key)
        state = self._state(key) if key in self._entries else None
        if state is not None:
            return state
        n, state = self.lookup(key)
        _, state = prefill(self.model, [list(key[n:])], state, self.state_dtype)
        self.put(key, state, pin=pin)
        return state

    # Internals ------------------------------------------------------------------------------------------
    def _state(self, key: tuple[int, ...]) -> InferenceState | None:
        """A copy of the cached state of `key`, read from disk when not in memory; None (and the entry
        dropped) when its file has become unreadable or no longer matches the model."""
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key].clone()
        path = self._entries[key].path
        try:
            state = InferenceState.load(path, self.model, prefix_tokens=list(key), state_dtype=self.state_dtype)
        except (OSError, ValueError) as e:  # unreadable, CorruptStateError, StateMismatchError: a miss
            logger.warning("prefix cache: dropping %s: %s", path, e)
            del self._entries[key]
            return None
        self._remember(key, state)
        return state.clone()

    def _remember(self, key: tuple[int, ...], state: InferenceState) -> None:
        if key in self._memory:
            self._bytes -= self._memory.pop(key).nbytes()
        self._memory[key] = state
        self._bytes += state.nbytes()
        for old_key in [k for k in self._memory if k not in self._pinned]:  # least recently used first
            if self._bytes <= self.max_bytes:
                break
            self._bytes -= self._memory.pop(old_key).nbytes()
            if self._entries[old_key].path is None:  # not on disk: evicting forgets it
                del self._entries[old_key]

    def _file_stem(self, key: tuple[int, ...]) -> str:
        model_hash = model_fingerprint(self.model)["weights_hash"]
        name = f"{model_hash}:{tokens_hash([list(key)])}"
        if self.state_dtype != default_state_dtype(self.model.dtype):  # beside the default's file of this prefix
            name += f":{self.state_dtype}"
        return hashlib.sha256(name.encode()).hexdigest()[:32]

    def _index_directory(self) -> None:
        """Register the directory's states that belong to this model (read from their headers only)."""
        mine = model_fingerprint(self.model)
        for path in sorted(self.directory.glob("*.safetensors")):
            try:
                meta = read_state_metadata(path)
            except CorruptStateError as e:
                logger.warning("prefix cache: skipping %s", e)
                continue
            if any(meta.get(k) != mine[k] for k in ("config_hash", "weights_hash", "dtype")):
                logger.debug("prefix cache: %s belongs to another model or dtype; ignored", path)
                continue
            if recorded_state_dtype(meta, self.model) not in ("None", str(self.state_dtype)):
                logger.debug("prefix cache: %s holds SSM states of another dtype; ignored", path)
                continue
            key = _recorded_prefix(meta)
            if key is None:
                logger.warning("prefix cache: skipping %s: its metadata records no single-row token prefix", path)
                continue
            self._entries[key] = _Entry(key, path)
        logger.info("prefix cache: %d states of this model in %s", len(self._entries), self.directory)


def _recorded_prefix(meta: dict[str, str]) -> tuple[int, ...] | None:
    """The token prefix a state file's metadata records for its one row, or None when it records none or
    something other than a non-empty list of token ids."""
    try:
        rows = json.loads(meta.get("prefix_tokens", "null"))
    except (TypeError, json.JSONDecodeError):
        return None
    if not (isinstance(rows, list) and len(rows) == 1 and isinstance(rows[0], list) and rows[0]):
        return None
    row = rows[0]
    return tuple(row) if all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in row) else None


def _key(tokens) -> tuple[int, ...]:
    """The token ids as a tuple; no per-token conversion, so a lookup stays cheap for long prompts."""
    key = tuple(tokens.tolist() if hasattr(tokens, "tolist") else tokens)
    if not key:
        raise InputError("tokens: a cached prefix needs at least one token")
    return key
