"""lm-evaluation-harness adapter: scores equal a direct forward pass, chunking and batching change nothing,
greedy flags and stop strings are right; the lm_eval wrapper itself runs only where lm_eval is installed."""

from __future__ import annotations

import sys

import pytest
import torch

from mambalab import LanguageModel, ModelConfig, SSMConfig
from mambalab.inference.generate import generate
from mambalab.models import lm_eval_adapter
from mambalab.models.lm_eval_adapter import Scorer, lm_eval_model_class
from mambalab.tokenizer import ByteTokenizer
from tests.conftest import rel_error

TOK = ByteTokenizer()


def byte_model(dtype=torch.float64) -> LanguageModel:
    config = ModelConfig(d_model=16, n_layer=2, vocab_size=TOK.vocab_size, ssm=SSMConfig(d_state=4))
    return LanguageModel(config).to(dtype).eval()


def direct_logprobs(model: LanguageModel, tokens: list[int], n: int) -> tuple[float, bool]:
    """Log-probability of the last n tokens from one full forward pass, and their greedy flag."""
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1])[0], -1)  # (l - 1, vocab)
    targets = ids[0, 1:]
    picked = logp[torch.arange(len(targets)), targets][len(targets) - n :]
    greedy = bool((logp.argmax(-1) == targets)[len(targets) - n :].all())
    return float(picked.sum()), greedy


@pytest.mark.parametrize("batch_size, tokens_per_call", [(1, 4096), (3, 7)])
def test_loglikelihood_equals_direct_forward(batch_size, tokens_per_call):
    model = byte_model()
    scorer = Scorer(model, TOK, batch_size=batch_size, tokens_per_call=tokens_per_call)
    pairs = [
        ("The cat sat on the ", "mat"),
        ("", "empty context"),
        ("trailing space ", "moves"),
        ("ab", "c" * 23),
    ]
    got = scorer.loglikelihood(pairs)
    for (context, continuation), (logprob, _) in zip(pairs, got):
        context_ids, continuation_ids = scorer.encode_pair(context, continuation)
        want, _ = direct_logprobs(model, context_ids + continuation_ids, len(continuation_ids))
        assert rel_error(torch.tensor(logprob), torch.tensor(want)) <= 1e-10
    assert scorer.encode_pair("trailing space ", "moves")[1] == TOK.encode(" moves")
    assert scorer.encode_pair("", "x")[0] == [TOK.bos_token_id]


def test_pairs_split_as_lm_eval_splits_them_where_a_merge_crosses_the_boundary(tmp_path):
    """A BPE merge ("cd") across context "abc" and continuation "de": lm_eval's context keeps its own tokens
    ("ab", "c"), and the continuation is the whole text's tokens after that count."""
    tokenizers = pytest.importorskip("tokenizers")
    template_lm = pytest.importorskip("lm_eval.api.model").TemplateLM
    from mambalab.tokenizer import load_tokenizer

    vocab = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "cd": 5, "ab": 6, "<|endoftext|>": 7}
    tokenizers.Tokenizer(tokenizers.models.BPE(vocab, [("c", "d"), ("a", "b")])).save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)

    class HarnessSide:  # what lm_eval's causal TemplateLM._encode_pair calls
        backend = "causal"

        def tok_encode(self, text, **kw):
            return tok.encode(text)

    scorer = Scorer(byte_model(), tok)
    for context, continuation in [("abc", "de"), ("abc ", "de"), ("ab", "cde")]:
        assert scorer.encode_pair(context, continuation) == template_lm._encode_pair(HarnessSide(), context,
                                                                                     continuation)
    assert scorer.encode_pair("abc", "de")[0] == tok.encode("abc")


def test_greedy_flag():
    model = byte_model()
    scorer = Scorer(model, TOK, batch_size=2, tokens_per_call=5)
    prompt = TOK.encode("Mamba")
    greedy = generate(model, [prompt], max_new_tokens=9).sequences[0]
    not_greedy = [*greedy]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + greedy[:4]]))[0, -1]  # (vocab,)
    not_greedy[4] = int(logits.argmin())
    rows = [(prompt + greedy, 9), (prompt + not_greedy, 9), (prompt + not_greedy[:4], 4)]
    results = scorer.score_tokens(rows)  # batched with the shorter row right-padded
    assert [flag for _, flag in results] == [True, False, True]
    assert results[1][0] < results[0][0]


def test_loglikelihood_rolling_equals_direct_forward():
    model = byte_model()
    texts = ["a short one", "a longer document that spans several time chunks " * 2]
    got = Scorer(model, TOK, batch_size=2, tokens_per_call=16).loglikelihood_rolling(texts)
    for text, logprob in zip(texts, got):
        ids = TOK.encode(text)
        want, _ = direct_logprobs(model, [TOK.bos_token_id, *ids], len(ids))
        assert rel_error(torch.tensor(logprob), torch.tensor(want)) <= 1e-10


def test_generate_until_is_greedy_generation_cut_at_stop_strings():
    model = byte_model(torch.float32)
    scorer = Scorer(model, TOK, batch_size=2)
    context = "Once upon a time"
    full = TOK.decode(generate(model, [TOK.encode(context)], max_new_tokens=12).sequences[0])
    stop = full[3:5]
    requests = [
        (context, {"until": [], "max_gen_toks": 12}),
        (context, {"until": [stop], "max_gen_toks": 12}),
    ]
    requests.append(("", {"until": "never", "max_gen_toks": 3, "temperature": 0.0, "do_sample": False}))
    got = scorer.generate_until(requests)
    assert got[0] == full and got[1] == full.split(stop)[0] and len(got[1]) <= 3
    with pytest.raises(ValueError, match=r"gen_kwargs: unsupported key\(s\) \['num_beams'\]"):
        scorer.generate_until([(context, {"num_beams": 4})])


def test_bad_arguments():
    with pytest.raises(ValueError, match="tokenizer has 259 tokens but the model only 64"):
        Scorer(LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=64)), TOK)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        Scorer(byte_model(), TOK, batch_size=0)
    with pytest.raises(ValueError, match=r"rows\[0\]: n=3 must be in \[0, 3\)"):
        Scorer(byte_model(), TOK).score_tokens([([1, 2, 3], 3)])


def test_tokenizerless_checkpoint_needs_a_tokenizer(tmp_path):
    LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no tokenizer.json .* pass tokenizer="):
        Scorer.from_pretrained(tmp_path)


def test_missing_lm_eval_gives_install_hint(monkeypatch):
    for name in ("lm_eval", "lm_eval.api", "lm_eval.api.model", "lm_eval.api.registry"):  # even if imported
        monkeypatch.setitem(sys.modules, name, None)
    lm_eval_model_class.cache_clear()
    with pytest.raises(ImportError, match="pip install lm-eval"):
        lm_eval_model_class()
    lm_eval_model_class.cache_clear()


def test_lm_eval_wrapper(tmp_path):
    pytest.importorskip("lm_eval.api.model")
    from lm_eval.api.instance import Instance

    model = byte_model(torch.float32)
    model.save_pretrained(tmp_path)
    lm = lm_eval_model_class()(pretrained=str(tmp_path), tokenizer="byte", batch_size="2")
    scorer = Scorer(model, TOK)

    def requests(kind, args):
        return [Instance(kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]

    pairs = [("Hello", " world"), ("", "x")]
    assert lm.loglikelihood(requests("loglikelihood", pairs)) == scorer.loglikelihood(pairs)
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [("doc",)]))
    assert rolling == scorer.loglikelihood_rolling(["doc"])
    gen = [("Hi", {"until": ["\n"], "max_gen_toks": 4})]
    assert lm.generate_until(requests("generate_until", gen)) == scorer.generate_until(gen)
    assert lm_eval_adapter.lm_eval_model_class() is type(lm)
