"""An OpenAI-compatible HTTP API over an `Engine`, on the standard library's ThreadingHTTPServer.

    GET  /v1/models              the one served model
    POST /v1/completions         prompt (a string, a list of strings, or token ids) -> text
    POST /v1/chat/completions    messages -> the assistant's reply, through `CHAT_TEMPLATE`

Options: max_tokens (default 16), temperature (default 1; 0 = greedy), top_p, top_k, min_p,
repetition_penalty, seed, stop (a string or up to 4), stream (server-sent events ending with
`data: [DONE]`), n = 1 only. A configured system prompt is used by chat requests without one of their own;
its state is computed once at start-up and every such request resumes from it (prefix cache).

A bad request gets a 400 JSON error `{"error": {"message", "type": "invalid_request_error", "param"}}`;
no request can stop the server. Generations are serialised by the engine's lock.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mambalab.serve.engine import Engine

logger = logging.getLogger(__name__)

# One message is "<|role|>\n{content}\n"; the prompt ends with the assistant's header. Each message is
# tokenized on its own, so a system message always gives the same tokens (and hits the prefix cache).
CHAT_TEMPLATE = "<|{role}|>\n{content}\n"
CHAT_ROLES = ("system", "user", "assistant")
CHAT_STOPS = ["<|user|>", "<|system|>"]  # the model starting another turn ends its reply
MAX_BODY_BYTES = 8 << 20


class RequestError(ValueError):
    """A bad request: answered with a 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


@dataclass
class _Options:
    max_new_tokens: int
    sampling: dict
    seed: int | None
    stop: list[str]
    stream: bool


class OpenAIApp:
    """Turns OpenAI request bodies into `Engine.complete` calls and OpenAI response bodies."""

    def __init__(self, engine: Engine, model_name: str = "mambalab", system_prompt: str | None = None):
        self.engine, self.model_name = engine, model_name
        self.system_prompt = system_prompt
        if system_prompt:
            tokens = self._message_tokens("system", system_prompt)
            engine.cache_prefix(tokens)
            logger.info("system prompt of %d tokens prefilled and cached", len(tokens))

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "mambalab"}]}

    # Requests -------------------------------------------------------------------------------------------
    def completion_prompts(self, body: dict) -> list[list[int]]:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError("prompt must be a string, a list of strings or a list of token ids", "prompt")
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return prompt
        if not all(isinstance(p, str) for p in prompt):
            raise RequestError("prompt must be a string, a list of strings or a list of token ids", "prompt")
        return [self.engine.encode(p) for p in prompt]

    def chat_prompt(self, body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list of {role, content} objects", "messages")
        parsed = []
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in CHAT_ROLES:
                raise RequestError(f"messages[{i}].role must be one of {list(CHAT_ROLES)}, got {role!r}", "messages")
            parsed.append((role, _content_text(m.get("content"), i)))
        if self.system_prompt and parsed[0][0] != "system":
            parsed.insert(0, ("system", self.system_prompt))
        tokens = [t for role, content in parsed for t in self._message_tokens(role, content)]
        return tokens + self.engine.encode("<|assistant|>\n")

    def _message_tokens(self, role: str, content: str) -> list[int]:
        return self.engine.encode(CHAT_TEMPLATE.format(role=role, content=content))

    def options(self, body: dict, default_stop: list[str]) -> _Options:
        """Validate the generation options of a request body."""
        if body.get("n", 1) != 1:
            raise RequestError("only n = 1 is supported", "n")
        for name in ("frequency_penalty", "presence_penalty"):
            if body.get(name, 0) not in (0, None):
                raise RequestError(f"{name} is not supported; use repetition_penalty", name)
        if body.get("logprobs") or body.get("echo"):
            raise RequestError("logprobs and echo are not supported", "logprobs" if body.get("logprobs") else "echo")
        max_tokens = _number(body, "max_tokens", 16, int, low=0)
        if "max_completion_tokens" in body:
            max_tokens = _number(body, "max_completion_tokens", 16, int, low=0)
        temperature = _number(body, "temperature", 1.0, float, low=0)
        sampling = {
            "do_sample": temperature > 0,
            "temperature": temperature if temperature > 0 else 1.0,
            "top_p": _number(body, "top_p", 1.0, float, low=0, low_open=True, high=1),
            "top_k": _number(body, "top_k", 0, int, low=0),
            "min_p": _number(body, "min_p", 0.0, float, low=0, high=1),
            "repetition_penalty": _number(body, "repetition_penalty", 1.0, float, low=0, low_open=True),
        }
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RequestError(f"seed must be an integer, got {seed!r}", "seed")
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise RequestError("stop must be a string or a list of at most 4 strings", "stop")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(f"stream must be a boolean, got {stream!r}", "stream")
        return _Options(max_tokens, sampling, seed, stop + default_stop, stream)

    def check_prompts(self, prompts: list[list[int]]) -> None:
        vocab = self.engine.model.config.vocab_size
        for p in prompts:
            if not p:
                raise RequestError("the prompt is empty", "prompt")
            if not all(0 <= t < vocab for t in p):
                raise RequestError(f"the prompt holds token ids outside [0, {vocab})", "prompt")

    def run(self, prompts: list[list[int]], opts: _Options, on_text=None):
        return self.engine.complete(prompts, opts.max_new_tokens, opts.stop, on_text, opts.seed, **opts.sampling)

    # Responses ------------------------------------------------------------------------------------------
    def response(self, chat: bool, completions) -> dict:
        choices = []
        for i, c in enumerate(completions):
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": c.text},
                                "finish_reason": c.finish_reason})
            else:
                choices.append({"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
        prompt_tokens = sum(c.prompt_tokens for c in completions)
        completion_tokens = sum(c.completion_tokens for c in completions)
        return {
            **self.envelope(chat, stream=False),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def chunk(self, chat: bool, envelope: dict, index: int, text: str | None, finish_reason: str | None = None,
              role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant"} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**envelope, "choices": [choice]}

    def envelope(self, chat: bool, stream: bool) -> dict:
        kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
        prefix = "chatcmpl" if chat else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.model_name}


def _content_text(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _number(body: dict, name: str, default, kind, low=None, high=None, low_open=False):
    value = body.get(name, default)
    if value is None:
        value = default
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if not ok_type or isinstance(value, bool):
        raise RequestError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if low is not None and (value <= low if low_open else value < low) or high is not None and value > high:
        bounds = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
        raise RequestError(f"{name} must be in {bounds}, got {value}", name)
    return kind(value)


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format, *args):  # route http.server's access log through logging
        logger.info("%s - %s", self.address_string(), format % args)

    def do_GET(self):
        self._guard(self._get)

    def do_POST(self):
        self._guard(self._post)

    def _guard(self, handler) -> None:
        """Run a handler; any failure becomes a JSON error response (never an exception in the server)."""
        try:
            handler()
        except RequestError as e:
            self._send_json(e.status, _error(str(e), e.param, "invalid_request_error"))
        except ValueError as e:  # a check deeper down (generate, tokenizer) refused the request
            self._send_json(400, _error(str(e), None, "invalid_request_error"))
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client %s went away", self.address_string())
        except Exception as e:
            logger.exception("error while serving %s", self.path)
            self._send_json(500, _error(f"internal error: {type(e).__name__}: {e}", None, "server_error"))

    def _get(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            raise RequestError(f"unknown path {self.path}", None, status=404)
        self._send_json(200, self.server.app.models())

    def _post(self) -> None:
        path = self.path.rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            raise RequestError(f"unknown path {self.path}", None, status=404)
        chat = path == "/v1/chat/completions"
        body = self._read_json()
        app = self.server.app
        prompts = [app.chat_prompt(body)] if chat else app.completion_prompts(body)
        opts = app.options(body, CHAT_STOPS if chat else [])
        app.check_prompts(prompts)
        if not opts.stream:
            self._send_json(200, app.response(chat, app.run(prompts, opts)))
            return
        envelope = app.envelope(chat, stream=True)
        self._start_events()
        if chat:
            self._event(app.chunk(chat, envelope, 0, None, role=True))
        try:
            completions = app.run(prompts, opts, lambda row, text: self._event(app.chunk(chat, envelope, row, text)))
        except ValueError as e:  # headers are sent: report in the stream
            self._event(_error(str(e), getattr(e, "param", None), "invalid_request_error"))
        else:
            for i, c in enumerate(completions):
                self._event(app.chunk(chat, envelope, i, None, c.finish_reason))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            raise RequestError(f"the request needs a JSON body of 1 to {MAX_BODY_BYTES} bytes", None)
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not valid JSON: {e}", None) from e
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object", None)
        return body

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def _event(self, payload: dict) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()


def _error(message: str, param: str | None, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": param}}


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the app; one thread per connection, daemon threads."""

    daemon_threads = True

    def __init__(self, app: OpenAIApp, host: str = "127.0.0.1", port: int = 8000):
        super().__init__((host, port), _Handler)
        self.app = app


def serve(
    model_dir: str, host: str = "127.0.0.1", port: int = 8000, system_prompt: str | None = None,
    device=None, dtype=None, cache_dir: str | None = None,
) -> None:
    """Load `model_dir` and serve it until interrupted."""
    from pathlib import Path

    engine = Engine.from_dir(model_dir, device=device, dtype=dtype, cache_dir=cache_dir)
    server = Server(OpenAIApp(engine, Path(model_dir).name, system_prompt), host, port)
    logger.info("serving %s on http://%s:%d/v1", model_dir, *server.server_address[:2])
    try:
        server.serve_forever()
    finally:
        server.server_close()
