"""Chat messages -> prompt tokens: the model's own chat template when it has one, else a simple default.

The model directory's template is `chat_template` in tokenizer_config.json (a string, or a list of named
templates of which "default" is taken) or a `chat_template.jinja` file; it is rendered in Jinja's sandbox the
way HF transformers does (`messages`, `add_generation_prompt=True`, `bos_token`, `eos_token`,
`raise_exception`). Without one, `DEFAULT_TEMPLATE` is used: each message is "<|role|>\\n{content}\\n" and
the prompt ends with "<|assistant|>\\n"; the model starting another turn ("<|user|>", "<|system|>") ends
its reply.

A leading system message is tokenized on its own (its rendering is a prefix of the whole conversation's),
so every conversation that starts with the same system prompt starts with the same tokens: the server caches
the state after them (its own system prompt, --system-prompt-file, at start-up and for good; a client's, in
memory, the first time a request passes it) and each later request resumes from it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from mambalab.errors import MambalabError
from mambalab.tokenizer import read_tokenizer_config

DEFAULT_TEMPLATE = "<|{role}|>\n{content}\n"
DEFAULT_GENERATION_PROMPT = "<|assistant|>\n"
DEFAULT_STOPS = ["<|user|>", "<|system|>"]
SYSTEM_CACHE_SIZE = 8


class ChatTemplateError(MambalabError):
    """The chat template could not render these messages (it raised, or it is not valid Jinja)."""


class ChatFormat:
    """Renders (role, content) messages as prompt tokens; `stops` end the assistant's turn."""

    def __init__(self, tokenizer, template: str | None = None, special_tokens: dict[str, str] | None = None):
        self.tokenizer, self.source = tokenizer, template
        self.special_tokens = special_tokens or {}
        self._template = None if template is None else _compile(template)
        self.stops = [] if template is not None else list(DEFAULT_STOPS)
        self._system_cache: dict[str, list[int]] = {}  # the last few system prompts' tokens (long ones recur)
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir: str | Path, tokenizer) -> ChatFormat:
        """The chat format of a model directory (its template when it has one)."""
        model_dir = Path(model_dir)
        config = read_tokenizer_config(model_dir / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        jinja_file = model_dir / "chat_template.jinja"
        if not isinstance(template, str) and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        specials = {}
        for key in ("bos_token", "eos_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            specials[key] = value if isinstance(value, str) else ""
        return cls(tokenizer, template if isinstance(template, str) else None, specials)

    @property
    def name(self) -> str:
        return "default" if self._template is None else "model"

    def tokens(self, messages: list[tuple[str, str]]) -> list[int]:
        """The prompt tokens of a conversation, ending where the assistant's reply begins."""
        return self.tokens_and_shared_prefix(messages)[0]

    def tokens_and_shared_prefix(self, messages: list[tuple[str, str]]) -> tuple[list[int], int]:
        """The prompt tokens and how many of them are the leading system message's (`system_tokens`), which
        every conversation starting with that message shares (0 when none or the template mixes them)."""
        has_system = messages[0][0] == "system"
        if self._template is None:
            head = self.system_tokens(messages[0][1]) if has_system else []
            rest = messages[1:] if has_system else messages
            return head + self._encode_turns(rest) + self.tokenizer.encode(DEFAULT_GENERATION_PROMPT), len(head)
        text = self._render(messages, add_generation_prompt=True)
        if has_system:
            try:  # some templates refuse a conversation of a system message alone: then no shared prefix
                prefix = self._render(messages[:1], add_generation_prompt=False)
            except ChatTemplateError:
                prefix = None
            if prefix and text.startswith(prefix):
                head = self.system_tokens(messages[0][1])
                return head + self.tokenizer.encode(text[len(prefix) :]), len(head)
        return self.tokenizer.encode(text), 0

    def system_tokens(self, content: str) -> list[int]:
        """The tokens a conversation starting with this system message starts with (cached by the server)."""
        tokens = self._system_cache.get(content)
        if tokens is None:
            if self._template is None:
                tokens = self._encode_turns([("system", content)])
            else:
                tokens = self.tokenizer.encode(self._render([("system", content)], add_generation_prompt=False))
            with self._lock:  # requests are tokenized on several threads
                if len(self._system_cache) >= SYSTEM_CACHE_SIZE:
                    self._system_cache.pop(next(iter(self._system_cache)))
                self._system_cache[content] = tokens
        return list(tokens)

    def _encode_turns(self, messages: list[tuple[str, str]]) -> list[int]:
        return [t for role, content in messages
                for t in self.tokenizer.encode(DEFAULT_TEMPLATE.format(role=role, content=content))]

    def _render(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=[{"role": role, "content": content} for role, content in messages],
                add_generation_prompt=add_generation_prompt, **self.special_tokens,
            )
        except TemplateError as e:
            raise ChatTemplateError(f"the model's chat template cannot render these messages: {e}") from e


def _compile(source: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise ChatTemplateError(f"the model's chat template is not valid Jinja: {e}") from e
