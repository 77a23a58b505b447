"""`TextStream`: one request's new tokens turned into settled text, cut at its stop strings.

Shared by the serving scheduler and `mambalab generate` (through `Engine`). Text is handed out as soon as it
is certain: an incomplete multi-byte character, or a tail that could still grow into a stop string, waits.

Decoding is incremental (constant work per token, whatever the length of the output): only the tokens since
the last settled one are decoded, after one token of context (`decode(ids[prefix:])` minus
`decode(ids[prefix:read])`), so tokenizers whose pieces depend on their left neighbour (leading spaces) decode
as the whole sequence would.
"""

from __future__ import annotations

# A UTF-8 character spans at most 4 bytes: past that many undecodable tokens, U+FFFD is the real text.
MAX_PENDING_TOKENS = 4


class TextStream:
    """Turns one row's tokens into text deltas. Text that could still become a stop string, or an
    incomplete multi-byte character (decoded as U+FFFD), is held back until it is settled."""

    def __init__(self, tokenizer, stop: list[str] | None = None, incremental: bool = True):
        self.tokenizer, self.stop = tokenizer, [s for s in (stop or []) if s]
        # Without stop strings, a reader that wants only the whole text gets it decoded once, at the end.
        self.incremental = incremental or bool(self.stop)
        self.ids: list[int] = []
        self.stopped = False  # a stop string was produced; nothing more is emitted
        self._pieces: list[str] = []  # the text handed out, in order
        self._held = ""  # settled text that could still start a stop string
        self._prefix = self._read = 0  # ids[_prefix:_read] is the context of the next decode

    @property
    def emitted(self) -> str:
        """All the text handed out so far."""
        return "".join(self._pieces)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def push(self, token: int) -> str:
        """Add a token; return the new text that is now certain (may be empty)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        if not self.incremental:
            return ""
        new = self._new_text(final=False)
        return self._settle(new) if new else ""

    def finish(self) -> str:
        """The text held back so far (the generation has ended without a stop string)."""
        if self.stopped:
            return ""
        tail = self._held + self._new_text(final=True)
        self._held = ""
        return self._hand_out(tail)

    def _new_text(self, final: bool) -> str:
        """Text of the tokens after `_read`, once it ends in a complete character (or `final`)."""
        context = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        pending = len(self.ids) - self._read
        if not final and text.endswith("\ufffd") and pending < MAX_PENDING_TOKENS:
            return ""
        if text == context:  # the new tokens have no text (special or unknown ids): nothing to wait for
            self._prefix = self._read = len(self.ids)
            return ""
        if len(text) < len(context) or not text.startswith(context):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(context) :]

    def _settle(self, new: str) -> str:
        """Append settled text; cut it at the first stop string, hold back a tail that may start one."""
        buffer = self._held + new
        cuts = [i for i in (buffer.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.stopped, self._held = True, ""
            return self._hand_out(buffer[: min(cuts)])
        hold = max((k for s in self.stop for k in range(1, len(s)) if buffer.endswith(s[:k])), default=0)
        self._held = buffer[len(buffer) - hold :]
        return self._hand_out(buffer[: len(buffer) - hold])

    def _hand_out(self, text: str) -> str:
        if text:
            self._pieces.append(text)
        return text

    def _decode(self, ids: list[int]) -> str:
        vocab = self.tokenizer.vocab_size  # a model may have more rows than its tokenizer: skip those
        return self.tokenizer.decode([i for i in ids if i < vocab]) if ids else ""
