"""`generate`: prompts in, continuations out, in recurrent (RNN) mode.

1. Prefill: prompts of equal length are run together in parallel mode (in chunks, so the logits of a long
   prompt never all sit in memory); groups of different lengths are prefilled separately and their states
   joined with `InferenceState.concat`. A given `state` (e.g. a cached prefix) is continued, not modified.
2. Decode: all rows advance together one token per step (`model.step`, replayed from a CUDA graph on GPU;
   with greedy decoding the choice of the next tokens is replayed from a second graph).
   Each row stops at EOS on its own; a finished row keeps being fed a pad token, but nothing more is
   reported for it. Each row's tokens are those that prompt alone would give.

The next token is chosen by `SamplingConfig` (greedy, or sampling with temperature / top-k / top-p / min-p,
plus a repetition penalty), seeded by `generator` for reproducible draws.
"""

from __future__ import annotations

import operator
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mambalab.errors import InputError
from mambalab.inference.cuda_graph import GraphStep, decode_step, graph_choice
from mambalab.inference.sampling import SamplingConfig
from mambalab.inference.state import InferenceState
from mambalab.inference.state_dtype import check_state_holds

# Tokens per parallel forward call while prefilling (rows × chunk length).
PREFILL_TOKENS_PER_CALL = 2048


@dataclass
class GenerationResult:
    """sequences[i]: the new tokens of prompt i (its EOS included when it stopped there); finish_reasons[i]:
    "stop" (EOS) or "length" (max_new_tokens); state: per row, the state after its prompt and all its new
    tokens (only with return_state=True)."""

    sequences: list[list[int]]
    finish_reasons: list[str]
    prompt_lengths: list[int]
    state: InferenceState | None = None


@torch.no_grad()
def generate(
    model,
    prompts,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    state: InferenceState | None = None,
    streamer: Callable[[int, int], None] | None = None,
    return_state: bool = False,
    use_cuda_graph: bool = True,
    compile_step: bool = False,
    state_dtype=None,
    prefix_tokens: Sequence[int] = (),
) -> GenerationResult:
    """Continue each prompt by up to `max_new_tokens` tokens.

    prompts: a (b, l) integer tensor, or a list of b token lists (lengths may differ).
    state: continue from it (batch b, or 1 = shared by every prompt); the prompts are then what follows it.
    streamer: called as streamer(row, token_id) for every new token as soon as it is chosen.
    eos_token_id: one id or several; a row stops after producing one of them.
    use_cuda_graph: on CUDA, replay the decode step from a CUDA graph (see cuda_graph.py); compile_step
    additionally runs it through torch.compile.
    state_dtype: the dtype of the SSM states (None = float32; "model" = the model's dtype, which halves a
    16-bit model's state bytes; see `LanguageModel.allocate_state`); a given `state` must hold it.
    prefix_tokens: the tokens a given `state` has consumed (a cached prefix): repetition_penalty counts them
    as seen, as it counts the prompt's, so continuing a cached prefix gives the tokens of the whole prompt.
    The sampling options are those of `SamplingConfig` (HF transformers' semantics)."""
    sampler = SamplingConfig(do_sample, temperature, top_k, top_p, min_p, repetition_penalty)
    rows = _prompt_rows(prompts, model.config.vocab_size)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    eos = _eos_ids(eos_token_id, model.config.vocab_size)
    if generator is not None and generator.device.type != model.device.type:
        raise InputError(f"generator is on {generator.device} but the model is on {model.device}")
    if state is not None and state.batch_size not in (1, len(rows)):
        raise InputError(f"state has batch {state.batch_size}; expected 1 or the number of prompts ({len(rows)})")

    logits, state = prefill(model, rows, state, state_dtype)  # (b, vocab)
    b, device = len(rows), logits.device
    prefix = _checked_row(prefix_tokens, "prefix_tokens", model.config.vocab_size)
    seen = None  # (b, vocab): the tokens the repetition penalty counts, the cached prefix's included
    if repetition_penalty != 1.0:
        seen = _seen_tokens([prefix + row for row in rows], logits.shape[-1], device)
    pad = eos[0] if eos else 0  # fed to finished rows

    # Only the prefill's logits are used when one token is asked for and no state: then there is no step.
    step = decode_step(model, state, use_cuda_graph, compile_step) if return_state or max_new_tokens > 1 else None
    in_graph = None  # greedy, unpenalised, no state kept: the choice is replayed from a graph as well
    if isinstance(step, GraphStep) and not return_state and not do_sample and seen is None:
        chooser, in_graph = _graph_chooser(step, sampler, eos, pad)
    else:
        chooser = _Chooser(sampler, seen, generator, eos, pad, b, device)
    sequences: list[list[int]] = [[] for _ in range(b)]
    reasons = ["length"] * b
    snapshots: dict[int, InferenceState] = {}
    for t in range(max_new_tokens):
        if in_graph is not None and t > 0:
            record = in_graph()  # the tokens are already the step's input
        else:
            tokens, record = chooser.record(logits)
            if in_graph is not None:
                step.tokens.copy_(tokens)
        host = _HostCopy(record)  # (3, b): tokens, finished before, newly finished
        if return_state or t < max_new_tokens - 1:  # queued behind the copy: the host reads while the GPU steps
            if in_graph is not None:
                step.graph.replay()
            else:
                logits = step(tokens)
        token_list, done_list, newly_list = host.get()
        for i in range(b):
            if not done_list[i]:
                sequences[i].append(token_list[i])
                if streamer is not None:
                    streamer(i, token_list[i])
            if newly_list[i]:
                reasons[i] = "stop"
                if return_state:  # the step above consumed its EOS; later steps only feed it padding
                    snapshots[i] = step.state.select([i])
        if all(done or new for done, new in zip(done_list, newly_list)):
            break
    final = None
    if return_state:
        final = InferenceState.concat([snapshots[i] if i in snapshots else step.state.select([i]) for i in range(b)])
    return GenerationResult(sequences, reasons, [len(r) for r in rows], final)


def prefill(model, rows: list[list[int]], state: InferenceState | None = None, state_dtype=None):
    """Run each prompt through the model in parallel mode, grouping prompts of equal length.
    Returns (logits of each prompt's last token (b, vocab), state after each prompt (batch b)); a new state
    holds its SSM states in `state_dtype` (see `LanguageModel.allocate_state`), a given one must hold that."""
    if state is not None:
        check_state_holds(state, state_dtype, model.dtype)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[len(row)].append(i)
    order, last_logits, states = [], [], []
    for length, members in groups.items():
        if state is None:
            group_state = model.allocate_state(len(members), state_dtype=state_dtype)
        else:
            group_state = state.select([0] * len(members) if state.batch_size == 1 else members)
        ids = torch.tensor([rows[i] for i in members], dtype=torch.long, device=model.device)  # (g, l)
        chunk = max(1, PREFILL_TOKENS_PER_CALL // len(members))
        for start in range(0, length, chunk):
            logits = model(ids[:, start : start + chunk], state=group_state)  # (g, c, vocab)
        order += members
        last_logits.append(logits[:, -1])
        states.append(group_state)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    logits = torch.cat(last_logits)[inverse.to(model.device)]  # (b, vocab) in prompt order
    joined = states[0] if len(states) == 1 else InferenceState.concat(states)
    return logits, joined.select(inverse.to(joined.device)) if len(states) > 1 else joined


class _Chooser:
    """Each step's next tokens, on the device: chosen by the sampler, the pad token for finished rows, and which
    rows finish now (their token is an EOS id). Keeps `finished` (b,) and `seen` in tensors it updates in place,
    so that `record` can be captured in a CUDA graph."""

    def __init__(self, sampler: SamplingConfig, seen, generator, eos: list[int], pad: int, b: int, device):
        self.sampler, self.seen, self.generator, self.pad = sampler, seen, generator, pad
        self.eos = torch.tensor(eos, dtype=torch.long, device=device)
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)  # (b,)

    def record(self, logits: torch.Tensor):
        """logits (b, vocab) -> (tokens (b,), record (3, b): tokens, finished before, newly finished)."""
        tokens = self.sampler.choose(logits, self.seen, self.generator)
        tokens = torch.where(self.finished, self.pad, tokens)
        newly = ~self.finished & torch.isin(tokens, self.eos) if self.eos.numel() else torch.zeros_like(self.finished)
        record = torch.stack([tokens, self.finished.long(), newly.long()])
        self.finished |= newly
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        return tokens, record


# Per captured step: the greedy choosers (by EOS ids and pad) and their graphs, kept with the step because a
# capture waits for the GPU and collects garbage (milliseconds: too slow for every call).
_GRAPH_CHOOSERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graph_chooser(step: GraphStep, sampler: SamplingConfig, eos: list[int], pad: int):
    """(a greedy chooser over step's batch with no row finished, its GraphChoice or None if it cannot be
    captured)."""
    choosers = _GRAPH_CHOOSERS.setdefault(step, {})
    key = (tuple(eos), pad)
    if key not in choosers:
        chooser = _Chooser(sampler, None, None, eos, pad, step.tokens.shape[0], step.tokens.device)
        choosers[key] = chooser, graph_choice(step, chooser.record)
    chooser, graph = choosers[key]
    chooser.finished.zero_()
    return chooser, graph


def _seen_tokens(rows: list[list[int]], vocab: int, device) -> torch.Tensor:
    """(b, vocab) bool: which tokens each prompt holds (for the repetition penalty)."""
    seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        seen[i, torch.tensor(row, device=device)] = True
    return seen


class _HostCopy:
    """Start copying a tensor to the host now (asynchronously on CUDA); `get()` waits and gives its list."""

    def __init__(self, tensor: torch.Tensor):
        self.ready = None
        if tensor.device.type == "cuda":
            tensor = tensor.to("cpu", non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        self.tensor = tensor

    def get(self) -> list:
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensor.tolist()


def _prompt_rows(prompts, vocab_size: int) -> list[list[int]]:
    """A (b, l) tensor or a list of token lists -> a list of int lists, validated."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.dtype not in (torch.int64, torch.int32):
            raise InputError(
                f"prompts must be a (batch, length) integer tensor, got {tuple(prompts.shape)} {prompts.dtype}"
            )
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(
        isinstance(r, (list, tuple)) for r in prompts
    ):
        raise InputError("prompts must be a (batch, length) tensor or a non-empty list of token lists")
    rows = []
    for i, row in enumerate(prompts):
        if not row:
            raise InputError(f"prompts[{i}] is empty; every prompt needs at least one token")
        rows.append(_checked_row(row, f"prompts[{i}]", vocab_size))
    return rows


def _checked_row(row, name: str, vocab_size: int) -> list[int]:
    """A sequence of token ids (a list or 1-D tensor) -> an int list, each an integer in [0, vocab_size)."""
    row = [_token_id(t, f"{name}[{j}]") for j, t in enumerate(row.tolist() if isinstance(row, torch.Tensor) else row)]
    bad = [t for t in row if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"{name} holds token id {bad[0]} outside [0, vocab_size={vocab_size})")
    return row


def _token_id(value, name: str) -> int:
    """An integer token id (Python or NumPy int); a float, even 1.0, or a bool is refused, never truncated."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InputError(f"{name} = {value!r} is not an integer token id")
    return operator.index(value)


def _eos_ids(eos_token_id, vocab_size: int) -> list[int]:
    if eos_token_id is None:
        return []
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    for t in ids:
        if not isinstance(t, int) or not 0 <= t < vocab_size:
            raise InputError(f"eos_token_id must be token id(s) in [0, vocab_size={vocab_size}), got {eos_token_id!r}")
    return ids
