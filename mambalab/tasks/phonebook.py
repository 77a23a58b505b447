"""Phone-book lookup (arXiv 2402.01032 §4): a book of names and numbers, then one name to look up.

Each entry is `name : number ,` with names of `name_len` letters (distinct within a book) and numbers of
`number_len` digits; after the book comes `? name :` and the model must write that name's number. The
paper finds a 410M Transformer beats a 2.8B Mamba once the book has >= 70 entries: the book must fit in a
fixed-size state. Scored: the number's digits; `headline`: the rate of exactly right numbers.

Training sequences may ask `train_queries` distinct names one after the other (`? name : number` each, every
number scored), as MQAR asks many keys: one lookup scores only `number_len` tokens of a long sequence, too
little signal for a small model to learn the lookup (a 2-layer Transformer++ stayed at 1-2 % after 3,000 steps
of books of 7-8 entries, benchmarks/notes/compare.md). Evaluation always asks one name. The book is the same
in both: as many entries as `length` holds with one lookup, so the extra lookups make a training sequence
(train_queries − 1) × query_len tokens longer than `length`; a book shortened to make room for them left a
model that fits 8-entry books at 5 % on the 15-entry books it was evaluated on (same length 128).

With `colon=False` an entry is `name number ,` and a lookup `? name number`: the first digit's key is then the
name alone, as each later digit's key is the digits before it (a small Transformer learnt those and not the
three-token key `name :`, benchmarks/notes/compare.md).

Numbers are written in base `n_digits` (10 by default): with a larger base each digit is one of more tokens,
so fewer entries of a book share a digit; `n_digits` = 64 with `number_len` = 1 and one-letter names without the
colon is MQAR's shape with a book as the context.

Tokens: digits 0 .. n_digits-1, letters n_digits .. n_digits+n_letters-1, then `:` (unused without the colon),
`,`, `?`. For `length` input tokens the book holds as many entries as fit; the generated batch can be up to one
entry shorter than `length`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mambalab.tasks.base import Task, next_token_batch, random_tokens, sample_without_replacement

DECIMAL = 10


@dataclass
class PhoneBook(Task):
    n_letters: int = 26
    name_len: int = 2
    number_len: int = 4
    train_queries: int = 1  # lookups per training sequence (evaluation: one)
    colon: bool = True  # `name : number ,`; False: `name number ,` (and `? name number`)
    n_digits: int = DECIMAL  # the base the numbers are written in: tokens 0 .. n_digits-1
    name: str = "phonebook"
    headline: str = "sequence_accuracy"

    def __post_init__(self) -> None:
        for field_name in ("n_letters", "name_len", "number_len", "train_queries"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"PhoneBook.{field_name} must be >= 1, got {getattr(self, field_name)}")
        if self.n_digits < 2:
            raise ValueError(f"PhoneBook.n_digits (the base of the numbers) must be >= 2, got {self.n_digits}")
        base = self.n_digits + self.n_letters
        self.colon_id, self.comma, self.query = base, base + 1, base + 2

    @property
    def vocab_size(self) -> int:
        return self.n_digits + self.n_letters + 3

    @property
    def entry_len(self) -> int:
        return self.name_len + self.number_len + 1 + self.colon  # name (:) number ,

    @property
    def query_len(self) -> int:
        return self.name_len + self.number_len + 1 + self.colon  # ? name (:) number

    def entries(self, length: int) -> int:
        """Entries in the book for at most `length` input tokens followed by one lookup."""
        return (length + 1 - self.query_len) // self.entry_len

    def min_length(self) -> int:
        return 1 + self.name_len + self.number_len + self.entry_len

    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        self.check_length(length)
        queries = self.train_queries if train else 1
        n = self.entries(length)
        if n < queries:
            raise ValueError(f"phonebook: length {length} holds {n} entries, fewer than the {queries} names asked"
                             f" per training sequence (train_queries); use a longer train_length")
        if n > self.n_letters**self.name_len:
            raise ValueError(
                f"phonebook: {n} entries need more distinct names than {self.n_letters}^{self.name_len}"
            )
        name_ids = sample_without_replacement(
            batch_size, self.n_letters**self.name_len, n, generator
        )  # (b, n)
        powers = self.n_letters ** torch.arange(self.name_len - 1, -1, -1)  # base-n_letters digits
        names = self.n_digits + (name_ids[..., None] // powers) % self.n_letters  # (b, n, name_len)
        numbers = random_tokens(
            (batch_size, n, self.number_len), 0, self.n_digits, generator
        )  # (b, n, number_len)
        colon = torch.full((batch_size, n, int(self.colon)), self.colon_id, dtype=torch.long)  # (b, n, 1 or 0)
        comma = torch.full((batch_size, n, 1), self.comma, dtype=torch.long)
        book = torch.cat([names, colon, numbers, comma], dim=-1).flatten(1)  # (b, n·entry_len)
        asked = sample_without_replacement(batch_size, n, queries, generator)  # (b, q) distinct entries
        rows = torch.arange(batch_size)[:, None]  # (b, 1)
        query = torch.cat(
            [
                torch.full((batch_size, queries, 1), self.query, dtype=torch.long),
                names[rows, asked],
                colon[:, :queries],
                numbers[rows, asked],
            ],
            dim=-1,
        )  # ? name : number per lookup   (b, q, query_len)
        seq = torch.cat([book, query.flatten(1)], dim=1)  # (b, l' + 1), l' ≤ length + (q − 1)·query_len
        target = torch.zeros(batch_size, queries, self.query_len, dtype=torch.bool)
        target[..., -self.number_len :] = True  # every lookup's number is scored
        target = torch.cat([torch.zeros_like(book, dtype=torch.bool), target.flatten(1)], dim=1)
        return next_token_batch(seq, target)
