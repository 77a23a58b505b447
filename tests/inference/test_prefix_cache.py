"""PrefixCache: longest-prefix lookup, LRU bounded in bytes, persistence in a directory."""

from __future__ import annotations

import pytest
import torch

from mambalab.inference.generate import generate
from mambalab.inference.prefix_cache import PrefixCache
from tests.conftest import rel_error
from tests.inference.conftest import random_prompts, tiny_model


def test_lookup_finds_the_longest_cached_proper_prefix(model):
    cache = PrefixCache(model)
    tokens = random_prompts([30])[0]
    for n in (5, 12, 20):
        cache.prefill(tokens[:n])
    assert cache.lookup(tokens)[0] == 20
    assert cache.lookup(tokens[:20])[0] == 12  # a whole-prompt match leaves no token to run: next shorter
    assert cache.lookup(tokens[:15])[0] == 12
    assert cache.lookup([(tokens[0] + 1) % 61] + tokens[1:]) == (0, None)
    n, state = cache.lookup(tokens)  # computed as 12 cached tokens + 8 more: equal up to rounding
    _, ref = model.prefill(torch.tensor([tokens[:20]]))
    assert all(rel_error(a[k], b[k]) < 1e-12 for a, b in zip(state.layers, ref.layers) for k in a)


def test_resuming_from_the_cache_gives_the_same_tokens(model):
    cache = PrefixCache(model)
    system, user = random_prompts([25, 4])
    cache.prefill(system)
    n, state = cache.lookup(system + user)
    assert n == len(system)
    assert generate(model, [user], 8, state=state).sequences == generate(model, [system + user], 8).sequences


def test_returned_states_are_copies(model):
    cache = PrefixCache(model)
    tokens = random_prompts([10])[0]
    cache.prefill(tokens[:6])
    _, state = cache.lookup(tokens)
    state.layers[0]["ssm"].fill_(7.0)
    assert not torch.equal(cache.lookup(tokens)[1].layers[0]["ssm"], state.layers[0]["ssm"])


def test_memory_is_bounded_in_bytes_least_recently_used_first(model):
    one = model.allocate_state(1).nbytes()
    cache = PrefixCache(model, max_bytes=2 * one)
    a, b, c = random_prompts([4, 5, 6])
    cache.prefill(a)
    cache.prefill(b)
    cache.lookup(a + [1])  # a is now the most recently used
    cache.prefill(c)  # evicts b
    assert len(cache) == 2 and cache.nbytes == 2 * one
    assert cache.lookup(b + [1]) == (0, None)
    assert cache.lookup(a + [1])[0] == len(a) and cache.lookup(c + [1])[0] == len(c)


def test_put_checks_the_state(model):
    cache = PrefixCache(model)
    _, state = model.prefill(torch.tensor(random_prompts([3, 3])))
    with pytest.raises(ValueError, match="batch-1 state"):
        cache.put([1, 2, 3], state)
    with pytest.raises(ValueError, match="consumed the 4 given tokens"):
        cache.put([1, 2, 3, 4], state.select([0]))
    with pytest.raises(ValueError, match="tokens"):
        cache.lookup([])


def test_directory_persists_states_for_a_new_cache_of_the_same_model_only(model, tmp_path):
    system, user = random_prompts([15, 3])
    PrefixCache(model, directory=tmp_path).prefill(system)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # atomic write: no temp file left

    reopened = PrefixCache(model, max_bytes=0, directory=tmp_path)  # nothing kept in memory: read from disk
    n, state = reopened.lookup(system + user)
    assert n == len(system) and reopened.nbytes == 0
    assert generate(model, [user], 6, state=state).sequences == generate(model, [system + user], 6).sequences
    assert len(PrefixCache(tiny_model(seed=3), directory=tmp_path)) == 0
    assert len(PrefixCache(tiny_model(dtype=torch.float32), directory=tmp_path)) == 0


def test_a_failed_write_registers_nothing_and_the_next_put_writes(model, tmp_path, monkeypatch):
    """A disk error while saving (ENOSPC) raises and leaves no entry and no file; putting the same prefix
    again writes it, and a new cache over the directory finds it."""
    from mambalab.inference.state import InferenceState

    (system,) = random_prompts([9])
    _, state = model.prefill(torch.tensor([system]))
    cache = PrefixCache(model, directory=tmp_path)
    save = InferenceState.save

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(InferenceState, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        cache.put(system, state)
    assert len(cache) == 0 and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(InferenceState, "save", save)
    cache.put(system, state)
    assert len(cache) == 1 and len(PrefixCache(model, directory=tmp_path)) == 1


def test_corrupt_files_in_the_directory_are_skipped(model, tmp_path):
    tokens = random_prompts([8])[0]
    PrefixCache(model, directory=tmp_path).prefill(tokens)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    cache = PrefixCache(model, max_bytes=0, directory=tmp_path)
    assert len(cache) == 1
    path = next(p for p in tmp_path.iterdir() if p.name != "junk.safetensors")
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cache.lookup(tokens + [1]) == (0, None) and len(cache) == 0  # damaged after indexing: dropped


def test_a_cached_prefix_with_a_repetition_penalty_gives_the_tokens_of_the_whole_prompt(model):
    (user,) = random_prompts([4])
    system = list(range(0, model.config.vocab_size, 2))  # half the vocabulary: the penalty changes the choice
    cache = PrefixCache(model)
    cache.prefill(system)
    n, state = cache.lookup(system + user)
    cold = generate(model, [system + user], 8, repetition_penalty=50.0).sequences
    warm = generate(model, [user], 8, state=state, prefix_tokens=system, repetition_penalty=50.0).sequences
    unseen = generate(model, [user], 8, state=cache.lookup(system + user)[1], repetition_penalty=50.0).sequences
    assert n == len(system) and warm == cold and unseen != cold  # without prefix_tokens the prefix is unseen
    with pytest.raises(ValueError, match="prefix_tokens"):
        generate(model, [user], 2, state=state, prefix_tokens=[-1], repetition_penalty=2.0)


def test_a_pinned_state_stays_in_memory_and_others_are_evicted_around_it(model):
    one = model.allocate_state(1).nbytes()
    cache = PrefixCache(model, max_bytes=one)
    pinned, a, b = random_prompts([7, 4, 5])
    cache.prefill(pinned, pin=True)
    cache.prefill(a)  # over max_bytes: a goes (the pinned state never does)
    assert cache.lookup(a + [1]) == (0, None) and cache.lookup(pinned + [1])[0] == len(pinned)
    cache.prefill(b)
    assert len(cache) == 1 and cache.lookup(pinned + [1])[0] == len(pinned)


def test_pinning_an_already_cached_state_keeps_it(model, tmp_path):
    one = model.allocate_state(1).nbytes()
    a, b = random_prompts([6, 8])
    PrefixCache(model, directory=tmp_path).prefill(a)  # on disk only, for the next cache
    cache = PrefixCache(model, max_bytes=one, directory=tmp_path)
    cache.prefill(a, pin=True)  # read from disk, now pinned
    cache.prefill(b)
    assert list(cache._memory) == [tuple(a)]  # b was evicted to disk, a stayed
    no_room = PrefixCache(model, max_bytes=0, directory=tmp_path)
    no_room.prefill(a, pin=True)  # its read from disk does not evict it
    assert list(no_room._memory) == [tuple(a)] and no_room.nbytes == one


def test_a_memory_only_put_writes_no_file(model, tmp_path):
    cache = PrefixCache(model, max_bytes=0, directory=tmp_path)
    tokens = random_prompts([9])[0]
    _, state = model.prefill(torch.tensor([tokens]))
    cache.put(tokens, state, persist=False)
    assert list(tmp_path.iterdir()) == []
    assert len(cache) == 0  # and with no room in memory it is forgotten at once, not kept half-registered
    cache.put(tokens, state)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1 and cache.lookup(tokens + [1])[0] == len(tokens)
