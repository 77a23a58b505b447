"""lm-evaluation-harness adapter: run `lm_eval` tasks on a mambalab model.

    import lm_eval
    from mambalab.models.lm_eval_adapter import lm_eval_model_class

    MambalabLM = lm_eval_model_class()          # also registers it as lm_eval model "mambalab"
    lm = MambalabLM(pretrained="ckpt", tokenizer="path/to/tokenizer.json", batch_size=8, device="cuda")
    lm_eval.simple_evaluate(model=lm, tasks=["lambada_openai"])

From the shell, lm_eval's own command line with the model registered (every lm_eval argument passes through):

    python -m mambalab.lm_eval --model mambalab --model_args pretrained=DIR --tasks lambada_openai \
        --batch_size auto --device cuda

(`mambalab-lm-eval` is the same command.) lm_eval finds models only in its registry, filled at import, so a
plain `lm_eval --model mambalab` cannot see this package. `--batch_size auto` (or `auto:N`) takes
`--max_batch_size` rows (64 by default): the memory of a call is bounded by `tokens_per_call` whatever the
batch, so there is nothing to probe.

`Scorer` does the work and needs no lm_eval: it turns text into token rows, scores them in batches, and
generates. `lm_eval_model_class()` imports lm_eval only when called (`pip install lm-eval`) and wraps a
`Scorer` in lm_eval's `LM` interface. The three request kinds:

    loglikelihood(context, continuation)  log p(continuation | context) and whether greedy decoding
                                          would produce exactly the continuation; the pair is tokenized
                                          as lm_eval's HF model does (whole text, then split at the
                                          context's token count; trailing context spaces move over);
    loglikelihood_rolling(text)           log p(text | prefix token), every token scored once;
    generate_until(context, gen_kwargs)   `mambalab.inference.generate`, cut at the first stop string.

A recurrent model has no context window, so nothing is truncated or windowed: long rows are run in
chunks along time, carrying the recurrent state (`model(ids, state=state)`), which bounds the memory
of the logits to `tokens_per_call` × vocab.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict

import torch

from mambalab.device import resolve_dtype
from mambalab.errors import InputError
from mambalab.inference.generate import generate
from mambalab.models.lm import LanguageModel
from mambalab.models.pretrained import load
from mambalab.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

# gen_kwargs of lm_eval's generate_until that map onto `generate`'s sampling options.
logger = logging.getLogger(__name__)

_SAMPLING_KWARGS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty")


class Scorer:
    """Scores and generates text with a mambalab `LanguageModel` and a mambalab tokenizer."""

    def __init__(
        self, model: LanguageModel, tokenizer: Tokenizer, batch_size: int = 8, tokens_per_call: int = 2048
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise InputError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
            )
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.tokens_per_call = batch_size, tokens_per_call
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise InputError("tokenizer has neither a BOS nor an EOS token to condition on an empty context")
        self.prefix_token_id = prefix

    @classmethod
    def from_pretrained(cls, pretrained, tokenizer=None, device=None, dtype=None, **kw) -> Scorer:
        """Load the checkpoint directory `pretrained` (`mambalab.load`) and its tokenizer: `tokenizer` (a
        tokenizer.json, a directory holding one, or "byte"), by default the one in `pretrained`."""
        model = load(pretrained, device=device, dtype=dtype)
        tok = load_tokenizer(pretrained if tokenizer is None else tokenizer)
        if tokenizer is None and isinstance(tok, ByteTokenizer) and model.config.vocab_size != tok.vocab_size:
            raise InputError(
                f"{pretrained} holds no tokenizer.json and its vocabulary ({model.config.vocab_size}) is not"
                " the byte tokenizer's; pass tokenizer= (a tokenizer.json or a directory holding one)"
            )
        return cls(model, tok, **kw)

    # Tokens ---------------------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as lm_eval's HF model makes them: trailing spaces of the context
        move to the continuation; the context is encoded alone, the continuation is the whole text's tokens
        after the context's token count (where a merge crosses the boundary, the context keeps its own
        tokens, as lm_eval's do)."""
        if not context:
            return [self.prefix_token_id], self.tokenizer.encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context)
        return context_ids, whole[len(context_ids) :]

    @torch.no_grad()
    def score_tokens(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """For each (tokens, n): the log-probability of the last n tokens, each given all tokens before it,
        and whether each of them is the model's argmax there. Rows are batched longest first."""
        for i, (tokens, n) in enumerate(rows):
            if not 0 <= n < len(tokens):
                raise InputError(
                    f"rows[{i}]: n={n} must be in [0, {len(tokens)}) (the first token is not scored)"
                )
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            members = order[start : start + self.batch_size]
            for i, result in zip(members, self._score_batch([rows[i] for i in members])):
                results[i] = result
        return results

    def _score_batch(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """Rows right-padded (a causal model never looks ahead, so padding cannot change scored positions)
        and run in time chunks that carry the recurrent state."""
        device, b = self.model.device, len(rows)
        n_inputs = torch.tensor([len(t) - 1 for t, _ in rows], device=device)  # (b,)
        first_scored = torch.tensor([len(t) - 1 - n for t, n in rows], device=device)  # (b,)
        tokens = torch.zeros(b, int(n_inputs.max()) + 1, dtype=torch.long, device=device)  # (b, L + 1)
        for i, (row, _) in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row, device=device)
        score_dtype = torch.float64 if self.model.dtype == torch.float64 else torch.float32
        logprob = torch.zeros(b, dtype=torch.float64, device=device)  # (b,)
        greedy = torch.ones(b, dtype=torch.bool, device=device)  # (b,)
        state = self.model.allocate_state(b)
        chunk = max(1, self.tokens_per_call // b)
        all_inputs, all_targets = tokens[:, :-1], tokens[:, 1:]  # (b, L) each
        for s in range(0, all_inputs.shape[1], chunk):
            inputs, targets = all_inputs[:, s : s + chunk], all_targets[:, s : s + chunk]  # (b, c)
            logits = self.model(inputs, state=state).to(score_dtype)  # (b, c, vocab)
            position = torch.arange(s, s + inputs.shape[1], device=device)  # (c,)
            scored = (position >= first_scored[:, None]) & (position < n_inputs[:, None])  # (b, c)
            target_logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)  # (b, c)
            logprob += torch.where(scored, target_logp, 0.0).sum(-1)
            greedy &= ((logits.argmax(-1) == targets) | ~scored).all(-1)
        return list(zip(logprob.tolist(), greedy.tolist()))

    # lm_eval's three request kinds, on plain arguments ------------------------------------------------------
    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        rows = []
        for context, continuation in pairs:
            context_ids, continuation_ids = self.encode_pair(context, continuation)
            rows.append((context_ids + continuation_ids, len(continuation_ids)))
        return self.score_tokens(rows)

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        rows = []
        for text in texts:
            ids = self.tokenizer.encode(text)
            rows.append(([self.prefix_token_id, *ids], len(ids)))
        return [logprob for logprob, _ in self.score_tokens(rows)]

    def generate_until(self, requests: list[tuple[str, dict]], default_max_tokens: int = 256) -> list[str]:
        """Requests with equal gen_kwargs are generated together, `batch_size` at a time."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (_, gen_kwargs) in enumerate(requests):
            groups[json.dumps(gen_kwargs, sort_keys=True, default=str)].append(i)
        texts = [""] * len(requests)
        text_vocab = self.tokenizer.vocab_size  # a model may have more rows (padding) than the tokenizer ids
        for members in groups.values():
            until, options = _generation_options(requests[members[0]][1], default_max_tokens)
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                prompts = [self.tokenizer.encode(requests[i][0]) or [self.prefix_token_id] for i in batch]
                result = generate(self.model, prompts, eos_token_id=self.tokenizer.eos_token_id, **options)
                for i, sequence in zip(batch, result.sequences):
                    known = [t for t in sequence if t < text_vocab]
                    if len(known) < len(sequence):
                        logger.warning("generate_until: dropped %d generated id(s) >= the tokenizer's vocabulary"
                                       " (%d), which have no text", len(sequence) - len(known), text_vocab)
                    texts[i] = _cut_at_stop(self.tokenizer.decode(known), until)
        return texts


def _generation_options(gen_kwargs: dict, default_max_tokens: int) -> tuple[list[str], dict]:
    """lm_eval gen_kwargs -> (stop strings, keyword arguments of `generate`); unknown keys are an error."""
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    options = {"max_new_tokens": int(kwargs.pop("max_gen_toks", default_max_tokens))}
    options.update({key: kwargs.pop(key) for key in _SAMPLING_KWARGS if key in kwargs})
    if options.get("temperature", 1.0) == 0.0:  # lm_eval's spelling of greedy decoding
        options.update(do_sample=False, temperature=1.0)
    if kwargs:
        raise InputError(
            f"gen_kwargs: unsupported key(s) {sorted(kwargs)};"
            f" supported: until, max_gen_toks, {', '.join(_SAMPLING_KWARGS)}"
        )
    return until, options


def _cut_at_stop(text: str, until: list[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def parse_batch_size(batch_size, max_batch_size=64) -> int:
    """lm_eval's --batch_size: an int, its string ("8"), or "auto" / "auto:N" = `max_batch_size` rows (the
    memory of a call does not grow with the batch, see the module doc)."""
    text = str(batch_size).strip()
    if text == "auto" or text.startswith("auto:"):
        return parse_batch_size(max_batch_size)
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"batch_size must be a positive int, 'auto' or 'auto:N', got {batch_size!r}")
    return int(text)


@functools.cache
def lm_eval_model_class() -> type:
    """lm_eval's `LM` subclass over `Scorer`, registered as model "mambalab". Imports lm_eval here, so the
    rest of mambalab never needs it."""
    try:
        from lm_eval.api.model import LM
        from lm_eval.api.registry import register_model
    except ImportError as e:
        raise ImportError(
            "the lm-evaluation-harness adapter needs the lm_eval package: pip install lm-eval"
        ) from e

    @register_model("mambalab")
    class MambalabLM(LM):
        """`pretrained`: a checkpoint directory (`mambalab.load`); `tokenizer`: a tokenizer.json, a directory
        holding one, or "byte" (default: the checkpoint's); `dtype`: e.g. "bfloat16"."""

        def __init__(
            self, pretrained, tokenizer=None, batch_size=8, device=None, dtype=None, max_gen_toks=256,
            max_batch_size=64,
        ):
            super().__init__()
            self.scorer = Scorer.from_pretrained(
                pretrained,
                tokenizer,
                device=device,
                dtype=resolve_dtype(dtype) if isinstance(dtype, str) else dtype,  # "bfloat16", "bf16", "auto"
                batch_size=parse_batch_size(batch_size, max_batch_size),
            )
            self.max_gen_toks = int(max_gen_toks)

        def loglikelihood(self, requests):
            return self.scorer.loglikelihood([request.args for request in requests])

        def loglikelihood_rolling(self, requests):
            return self.scorer.loglikelihood_rolling([request.args[0] for request in requests])

        def generate_until(self, requests):
            return self.scorer.generate_until([request.args for request in requests], self.max_gen_toks)

    return MambalabLM
