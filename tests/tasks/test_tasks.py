"""Task generators: format, seeding, the semantics each paper defines, and the metric on right/wrong answers."""

from __future__ import annotations

import pytest
import torch

from mambalab.tasks import (
    IGNORE_INDEX,
    MQAR,
    Copying,
    InductionHeads,
    PhoneBook,
    SelectiveCopying,
    build_task,
    lm_task,
    seeded,
)
from mambalab.tasks.base import accuracy_metrics
from mambalab.tasks.selective_copying import NOISE, SEPARATOR

CASES = [
    ("selective_copying", {"vocab_size": 16, "n_copy": 6}, 40),
    ("induction_heads", {"vocab_size": 16}, 33),
    ("mqar", {"vocab_size": 128}, 64),
    ("copying", {"alphabet_size": 26}, 31),
    ("phonebook", {"n_letters": 6}, 50),
    ("lm", {"max_bytes": 20000}, 24),
]


def perfect_logits(labels: torch.Tensor, vocab: int) -> torch.Tensor:
    logits = torch.randn(*labels.shape, vocab)  # (b, l, v)
    logits.scatter_(2, labels.clamp(min=0)[..., None], 100.0)
    return logits


@pytest.mark.parametrize("name,options,length", CASES)
def test_format_seeding_and_metric(name, options, length):
    task = build_task(name, **options)
    seed = int(torch.randint(0, 2**31, ()).item())
    for train in (True, False):
        batch = task.batch(8, length, seeded(seed), train=train)
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.shape[0] == 8
        assert ids.shape[1] <= length and (name == "phonebook" or ids.shape[1] == length)
        assert 0 <= int(ids.min()) and int(ids.max()) < task.vocab_size
        scored = labels[labels != IGNORE_INDEX]
        assert scored.numel() > 0 and int(scored.min()) >= 0 and int(scored.max()) < task.vocab_size
        again = task.batch(8, length, seeded(seed), train=train)
        assert torch.equal(again["input_ids"], ids) and torch.equal(again["labels"], labels)
        other = task.batch(8, length, seeded(seed + 1), train=train)
        assert not torch.equal(other["input_ids"], ids)
        right = task.score(perfect_logits(labels, task.vocab_size), batch)
        assert right["token_accuracy"] == right["sequence_accuracy"] == 1.0
        wrong_labels = torch.where(labels == IGNORE_INDEX, labels, (labels + 1) % task.vocab_size)
        wrong = task.score(perfect_logits(wrong_labels, task.vocab_size), batch)
        assert wrong["token_accuracy"] == wrong["sequence_accuracy"] == 0.0
        assert wrong["loss"] > right["loss"]


def test_metric_counts_partial_answers():
    labels = torch.tensor(
        [[IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 5]]
    )  # 3 scored tokens, 2 examples
    logits = perfect_logits(labels, 8)
    logits[0, 2] = 0.0
    logits[0, 2, 7] = 100.0  # one wrong token in example 0
    m = accuracy_metrics(logits, labels)
    assert m["token_accuracy"] == pytest.approx(2 / 3) and m["sequence_accuracy"] == pytest.approx(1 / 2)


def test_selective_copying_answer_is_the_data_in_order():
    task = SelectiveCopying(vocab_size=10, n_copy=5)
    b = task.batch(16, 30, seeded(1))
    for ids, labels in zip(b["input_ids"], b["labels"]):
        context = ids[: 30 - 5]
        data = context[context != NOISE]
        assert data.numel() == 5 and int(ids[25]) == SEPARATOR
        assert torch.equal(labels[labels != IGNORE_INDEX], data)
        assert torch.equal(ids[26:], data[:-1])  # teacher forcing


def test_induction_heads_answer_follows_first_special():
    task = InductionHeads(vocab_size=8)
    b = task.batch(32, 40, seeded(2))
    for ids, labels in zip(b["input_ids"], b["labels"]):
        specials = (ids == 0).nonzero().flatten()
        assert specials.numel() == 2 and int(specials[1]) == 39
        assert int(labels[39]) == int(ids[specials[0] + 1]) and (labels != IGNORE_INDEX).sum() == 1


def test_mqar_keys_values_halves_and_queries():
    task = MQAR(vocab_size=256)
    b = task.batch(16, 128, seeded(3))
    n_kv = 128 // 16
    for ids, labels in zip(b["input_ids"], b["labels"]):
        keys, values = ids[0 : 2 * n_kv : 2], ids[1 : 2 * n_kv : 2]
        assert keys.unique().numel() == n_kv and int(keys.min()) >= 1 and int(keys.max()) < 128
        assert values.unique().numel() == n_kv and int(values.min()) >= 128
        answers = (labels != IGNORE_INDEX).nonzero().flatten()
        assert answers.numel() == n_kv and int(answers.min()) >= 2 * n_kv
        lookup = dict(zip(keys.tolist(), values.tolist()))
        for pos in answers.tolist():
            assert int(labels[pos]) == lookup[int(ids[pos])]  # the query's value
            assert (pos - 2 * n_kv) % 2 == 0


def test_mqar_power_law_places_queries_early():
    task = MQAR(vocab_size=512, n_kv=4)
    labels = task.batch(512, 512, seeded(4))["labels"]
    offsets = (labels != IGNORE_INDEX).nonzero()[:, 1].float() - 8  # position in the query region
    assert offsets.median() < 0.25 * (512 - 8)  # p(g) ∝ g^-0.99 puts most gaps near the start


def test_copying_layout_and_variable_training_lengths():
    task = Copying(alphabet_size=26)
    b = task.batch(64, 22, seeded(5), train=False)  # n = 10 letters
    for ids, labels in zip(b["input_ids"], b["labels"]):
        assert int(ids[0]) == task.bos and int(ids[11]) == task.sep
        assert torch.equal(ids[12:22], ids[1:11])
        assert torch.equal(labels[11:21], ids[1:11]) and int(labels[21]) == task.eos
        assert (labels[:11] == IGNORE_INDEX).all()
    lengths = (task.batch(64, 22, seeded(5), train=True)["labels"] == task.eos).nonzero()[:, 1]
    assert lengths.unique().numel() > 3  # training mixes string lengths


@pytest.mark.parametrize("colon", [True, False])
def test_phonebook_query_number_is_in_the_book(colon):
    """`name : number ,` entries (or `name number ,` without the colon), distinct names, and the asked name's
    number as the only scored tokens."""
    task = PhoneBook(n_letters=5, name_len=2, number_len=3, colon=colon)
    b = task.batch(16, 60, seeded(6))
    e, start = task.entry_len, 2 + colon  # the number's first position in an entry
    assert e == 6 + colon
    for ids, labels in zip(b["input_ids"], b["labels"]):
        n = task.entries(60)
        book = ids[: n * e].view(n, e)
        names = [tuple(r[:2].tolist()) for r in book]
        assert len(set(names)) == n
        assert (book[:, 2] == task.colon_id).all() if colon else (book[:, 2] < 10).all()
        query_name = tuple(ids[n * e + 1 : n * e + 3].tolist())
        number = labels[labels != IGNORE_INDEX]
        assert number.tolist() == book[names.index(query_name), start : start + 3].tolist()


def test_phonebook_training_sequences_ask_several_names_and_evaluation_one():
    """train_queries=3: three distinct names of the book asked after it, each answered by its own number, every
    number scored; evaluation batches ask one name in a book of the same size (the training sequences are two
    lookups longer); too short a length for the names asked is refused."""
    task = PhoneBook(n_letters=5, name_len=2, number_len=3, train_queries=3)
    e, q = task.entry_len, task.query_len
    train = task.batch(8, 60, seeded(7))
    n = task.entries(60)
    assert train["input_ids"].shape[1] == n * e + 3 * q - 1 <= 60 + 2 * q
    for ids, labels in zip(train["input_ids"], train["labels"]):
        book = ids[: n * e].view(n, e)
        names = [tuple(r[:2].tolist()) for r in book]
        asked = torch.cat([ids, labels[-1:]])[n * e:].view(3, q)  # the last number digit is only a label
        assert asked[:, 0].eq(task.query).all() and len({tuple(a[1:3].tolist()) for a in asked}) == 3
        scored = labels[n * e - 1:].view(3, q)[:, -3:]  # labels are shifted by one position
        for lookup, number in zip(asked, scored):
            assert number.tolist() == book[names.index(tuple(lookup[1:3].tolist())), 3:6].tolist()
        assert (labels != IGNORE_INDEX).sum() == 3 * 3
    evaluation = task.batch(8, 60, seeded(7), train=False)
    assert ((evaluation["labels"] != IGNORE_INDEX).sum(1) == 3).all()
    assert evaluation["input_ids"].shape[1] == n * e + q - 1 <= 60
    with pytest.raises(ValueError, match="train_queries"):
        PhoneBook(train_queries=5).batch(2, 30, seeded(0))


def test_phonebook_numbers_in_another_base():
    """n_digits=64, one-digit numbers, one-letter names, no colon (MQAR's shape): digits are the tokens 0..63 and
    use all of them, letters follow them, the asked number is the asked name's; a base below 2 is refused."""
    task = PhoneBook(n_letters=8, name_len=1, number_len=1, colon=False, n_digits=64)
    assert task.vocab_size == 64 + 8 + 3 and task.entry_len == 3
    b = task.batch(64, 20, seeded(8))
    n = task.entries(20)
    book = b["input_ids"][:, : n * 3].view(64, n, 3)  # (b, n, name number ,)
    assert ((book[..., 0] >= 64) & (book[..., 0] < 72)).all() and (book[..., 2] == task.comma).all()
    assert book[..., 1].unique().numel() == 64  # every digit token of the base is drawn
    asked = b["input_ids"][:, n * 3 + 1]  # (b,) the name after `?`
    answers = b["labels"][b["labels"] != IGNORE_INDEX]  # (b,) one one-digit number each
    rows = (book[..., 0] == asked[:, None]).float().argmax(1)  # (b,) the asked entry
    assert torch.equal(answers, book[torch.arange(64), rows, 1])
    with pytest.raises(ValueError, match="n_digits"):
        PhoneBook(n_digits=1)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: SelectiveCopying(n_copy=0),
        lambda: MQAR(kv_ratio=2),
        lambda: build_task("nope"),
        lambda: InductionHeads().batch(2, 2, seeded(0)),
    ],
)
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_lm_task_refuses_a_corpus_whose_content_changed(tmp_path):
    from mambalab.atomic import file_sha256

    corpus = tmp_path / "c.txt"
    corpus.write_text("abc " * 100)
    digest = file_sha256(corpus)
    assert lm_task(corpus=corpus, corpus_sha256=digest).tokens.numel() == 400
    corpus.write_text("abd " * 100)
    with pytest.raises(ValueError, match="changed"):
        lm_task(corpus=corpus, corpus_sha256=digest)


def test_lm_task_byte_ids_are_the_tokenizers(tmp_path):
    from mambalab.tasks import _token_ids
    from mambalab.tokenizer import ByteTokenizer

    text = "héllo wörld ✓ \udcff and more text"
    assert _token_ids(ByteTokenizer(), text).tolist() == ByteTokenizer().encode(text)
    assert _token_ids(ByteTokenizer(), "").tolist() == []
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc ✓ " * 50)
    task = lm_task(corpus=corpus, max_bytes=100)
    assert task.dataset_tokens()["train"] + task.dataset_tokens()["eval"] == 100
