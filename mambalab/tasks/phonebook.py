"""Phone-book lookup (arXiv 2402.01032 §4): a book of names and numbers, then one name to look up.

Each entry is `name : number ,` with names of `name_len` letters (distinct within a book) and numbers of
`number_len` digits; after the book comes `? name :` and the model must write that name's number. The
paper finds a 410M Transformer beats a 2.8B Mamba once the book has >= 70 entries: the book must fit in a
fixed-size state. Scored: the number's digits; `headline`: the rate of exactly right numbers.

Tokens: digits 0-9, letters 10 .. 10+n_letters-1, then `:`, `,`, `?`. For `length` input tokens the book
holds as many entries as fit; the generated batch can be up to one entry shorter than `length`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mambalab.tasks.base import Task, next_token_batch, random_tokens, sample_without_replacement

N_DIGITS = 10


@dataclass
class PhoneBook(Task):
    n_letters: int = 26
    name_len: int = 2
    number_len: int = 4
    name: str = "phonebook"
    headline: str = "sequence_accuracy"

    def __post_init__(self) -> None:
        for field_name in ("n_letters", "name_len", "number_len"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"PhoneBook.{field_name} must be >= 1, got {getattr(self, field_name)}")
        base = N_DIGITS + self.n_letters
        self.colon, self.comma, self.query = base, base + 1, base + 2

    @property
    def vocab_size(self) -> int:
        return N_DIGITS + self.n_letters + 3

    @property
    def entry_len(self) -> int:
        return self.name_len + self.number_len + 2

    def entries(self, length: int) -> int:
        """Entries in the book for at most `length` input tokens."""
        return (length - 1 - self.name_len - self.number_len) // self.entry_len

    def min_length(self) -> int:
        return 1 + self.name_len + self.number_len + self.entry_len

    def batch(self, batch_size: int, length: int, generator: torch.Generator, train: bool = True) -> dict:
        self.check_length(length)
        n = self.entries(length)
        if n > self.n_letters**self.name_len:
            raise ValueError(
                f"phonebook: {n} entries need more distinct names than {self.n_letters}^{self.name_len}"
            )
        name_ids = sample_without_replacement(
            batch_size, self.n_letters**self.name_len, n, generator
        )  # (b, n)
        powers = self.n_letters ** torch.arange(self.name_len - 1, -1, -1)  # base-n_letters digits
        names = N_DIGITS + (name_ids[..., None] // powers) % self.n_letters  # (b, n, name_len)
        numbers = random_tokens(
            (batch_size, n, self.number_len), 0, N_DIGITS, generator
        )  # (b, n, number_len)
        colon = torch.full((batch_size, n, 1), self.colon, dtype=torch.long)
        comma = torch.full((batch_size, n, 1), self.comma, dtype=torch.long)
        book = torch.cat([names, colon, numbers, comma], dim=-1).flatten(1)  # (b, n·entry_len)
        asked = torch.randint(0, n, (batch_size,), generator=generator)  # (b,)
        rows = torch.arange(batch_size)
        query = torch.cat(
            [
                torch.full((batch_size, 1), self.query, dtype=torch.long),
                names[rows, asked],
                colon[:, 0],
                numbers[rows, asked],
            ],
            dim=-1,
        )  # ? name : number   (b, 2 + name_len + number_len)
        seq = torch.cat([book, query], dim=1)  # (b, l' + 1)
        target = torch.zeros_like(seq, dtype=torch.bool)
        target[:, -self.number_len :] = True
        return next_token_batch(seq, target)
