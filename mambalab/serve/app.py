"""An OpenAI-compatible HTTP API over an `Engine`, on FastAPI.

    GET  /health, /version               liveness and the mambalab version (no API key needed)
    GET  /v1/models, /v1/models/{id}      the one served model
    POST /v1/completions                  prompt (a string, strings, token ids, token-id lists) -> text
    POST /v1/chat/completions             messages -> the assistant's reply, through `ChatFormat`

Requests are validated by the strict models of `protocol.py` and handed to the engine's scheduler, which runs
in its own thread; the event loop only waits for their text (signalled from the scheduler thread with
`call_soon_threadsafe`), so no request, slow reader or disconnected client can hold up another. A client
that disconnects has its request cancelled at the next scheduler step.

Every error is a JSON body `{"error": {"message", "type", "param", "code"}}`: 400 bad request (malformed
JSON, unknown or unsupported field, out-of-bounds value, prompt + max_tokens past --max-model-len), 401 bad
API key, 404 unknown path or model, 405 wrong method, 408 request timeout, 413 body too large, 429 too many
waiting requests, 503 shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import threading
import time
import uuid
import weakref
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mambalab.errors import MambalabError
from mambalab.inference.sampling import SamplingConfig
from mambalab.serve.chat import ChatFormat, ChatTemplateError
from mambalab.serve.engine import Engine
from mambalab.serve.protocol import ApiError, ChatRequest, CompletionRequest, parse
from mambalab.serve.scheduler import Request as EngineRequest
from mambalab.serve.scheduler import RequestRejected
from mambalab.serve.server import STREAM_INTERVAL_S, serve

__all__ = ["create_app", "serve"]  # serve: the entry point's old home, kept

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; used for chat as well


def create_app(
    engine: Engine,
    model_name: str = "mambalab",
    chat_format: ChatFormat | None = None,
    system_prompt: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    drain_timeout: float = 10.0,
    stream_interval: float = STREAM_INTERVAL_S,
) -> FastAPI:
    """The FastAPI app. Its lifespan prefills and caches the system prompt (chat requests without a system
    message of their own get it, and resume from its cached state), starts the scheduler thread, and on
    shutdown lets in-flight requests finish for up to `drain_timeout` s before cancelling them.

    A streamed request's first token is sent at once; after it, text waits until `stream_interval` s have
    passed since the stream's last event, so that one event carries all the tokens made meanwhile (0: an
    event for every scheduler step that made text). Each event costs the event loop more than a token costs
    the scheduler, and both share one interpreter: with many fast streams, per-token events slow the decode."""
    if not stream_interval >= 0:
        raise MambalabError(f"stream_interval must be >= 0 seconds, got {stream_interval!r}")
    chat = chat_format or ChatFormat(engine.tokenizer)
    created = int(time.time())
    try:
        system_tokens = chat.system_tokens(system_prompt) if system_prompt else []
    except ChatTemplateError as e:
        logger.warning("the system prompt is not cached: %s", e)
        system_tokens = []
    if len(system_tokens) >= engine.limits.max_model_len:
        raise MambalabError(f"the system prompt has {len(system_tokens)} tokens, leaving no room under"
                            f" --max-model-len {engine.limits.max_model_len}")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if system_tokens:
            await run_in_threadpool(engine.cache_prefix, system_tokens, True)
            logger.info("system prompt of %d tokens prefilled and cached", len(system_tokens))
        await run_in_threadpool(engine.start)  # captures the CUDA graphs first
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop, drain_timeout)

    app = FastAPI(title="mambalab", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key", "authentication_error")

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "mambalab",
                "max_model_len": engine.limits.max_model_len}

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{model_name}'",
                           "model", "model_not_found")

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            error = ApiError(404, f"unknown path {request.url.path}", None, "not_found")
        elif e.status_code == 405:
            error = ApiError(405, f"method {request.method} is not allowed on {request.url.path}", None,
                             "method_not_allowed")
        else:
            error = ApiError(e.status_code, str(e.detail), None, None)
        return JSONResponse(error.body(), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, e: Exception):
        logger.exception("unhandled error")
        error = ApiError(500, f"internal error: {type(e).__name__}", None, None, "server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/version")
    async def version_():
        return {"version": _version()}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str):
        authorize(request)
        check_model(model_id)
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = parse(CompletionRequest, await _read_json(request, max_body_bytes))
        check_model(body.model)
        _check_unicode([body.prompt] if isinstance(body.prompt, str) else body.prompt, "prompt")
        prompts = await run_in_threadpool(_completion_prompts, engine, body.prompt)
        return await _serve(request, engine, model_name, False, prompts, body, body.max_tokens, [], stream_interval)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = parse(ChatRequest, await _read_json(request, max_body_bytes))
        check_model(body.model)
        messages = [("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
        _check_unicode([text for _, text in messages], "messages")
        if system_prompt and messages[0][0] != "system":
            messages.insert(0, ("system", system_prompt))
        try:
            prompt, shared = await run_in_threadpool(chat.tokens_and_shared_prefix, messages)
        except ChatTemplateError as e:
            raise ApiError(400, str(e), "messages") from None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await _serve(request, engine, model_name, True, [prompt], body, max_tokens, chat.stops,
                            stream_interval, shared)

    return app


def _version() -> str:
    try:
        return version("mambalab")
    except PackageNotFoundError:
        return "unknown"


async def _read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object: 413 past `limit` bytes (read no further), 400 when not a JSON object."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        status = 413 if length.isdigit() else 400
        raise ApiError(status, f"the body must be a JSON object of at most {limit} bytes", None,
                       "request_too_large" if status == 413 else None)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"the body must be a JSON object of at most {limit} bytes", None, "request_too_large")
    try:
        body = json.loads(bytes(data))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too many digits
        message = "too deeply nested" if isinstance(e, RecursionError) else str(e)[:200]
        raise ApiError(400, f"the body is not valid JSON: {message}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
    return body


def _check_unicode(items, param: str) -> None:
    """ApiError 400 for a string of `items` that is not Unicode text UTF-8 can encode: a lone surrogate such as
    "\\ud83d" (half an emoji), which JSON allows and clients that cut strings send. Non-strings are skipped."""
    for i, text in enumerate(items):
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ApiError(400, f"{param}[{i}]: not valid Unicode text ({e.reason} at character {e.start})",
                               param) from None


def _completion_prompts(engine: Engine, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        return [engine.encode(prompt)]
    if isinstance(prompt[0], int):
        return [prompt]
    return [engine.encode(p) if isinstance(p, str) else p for p in prompt]


def _sampling(body) -> SamplingConfig:
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingConfig(
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=max(0, body.top_k or 0),
        top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
    )


async def _serve(request: Request, engine: Engine, model_name: str, chat: bool, prompts: list[list[int]], body,
                 max_tokens: int | None, default_stops: list[str], stream_interval: float,
                 shared_prefix: int = 0):
    """Submit one engine request per prompt (the first `shared_prefix` tokens of each are a system prompt
    that other requests share; a chat prompt's state is cached for the conversation's next turn); answer with
    one JSON body or an SSE stream."""
    news = asyncio.Event()
    notify = functools.partial(_Wakeups.of(asyncio.get_running_loop()).mark, news)  # from the scheduler thread
    limit = engine.limits.max_model_len
    sampling, stops = _sampling(body), body.stop_strings() + default_stops
    requests = [
        EngineRequest(p, max_tokens if max_tokens is not None else max(0, min(DEFAULT_MAX_TOKENS, limit - len(p))),
                      sampling, body.seed, stops, bool(body.ignore_eos), on_update=notify,
                      streaming=bool(body.stream), shared_prefix=shared_prefix, cache_prompt=chat)
        for p in prompts
    ]
    try:
        engine.scheduler.submit(requests)
    except RequestRejected as e:
        kind = {429: "rate_limit_error", 503: "server_error"}.get(e.status, "invalid_request_error")
        raise ApiError(e.status, str(e), e.param, None, kind) from None
    envelope = _Envelope(chat, model_name, body.stream)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_events(requests, news, envelope, include_usage, stream_interval),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    if not await _wait(request, requests, news):
        return Response(status_code=499)  # the client has gone: nobody reads this
    failed = _failure(requests)
    if failed is not None:
        raise failed
    return envelope.response([(r.text.emitted, r.finish_reason) for r in requests], _usage(requests))


async def _wait(request: Request, requests: list[EngineRequest], news: asyncio.Event) -> bool:
    """Wait until every request has finished (True) or the client disconnects (False, requests cancelled)."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            news.clear()
            if all(r.done.is_set() for r in requests):
                return True
            woken = asyncio.ensure_future(news.wait())
            finished, _ = await asyncio.wait({woken, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in finished:
                woken.cancel()
                return False
    finally:
        gone.cancel()
        for r in requests:
            r.cancel()  # no-op for finished ones; cancels on disconnect or when this task is cancelled


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(requests: list[EngineRequest], news: asyncio.Event, envelope: _Envelope, include_usage: bool,
                  interval: float = 0.0):
    """The SSE stream: text chunks as they settle (the first token of a choice always gets one at once, its
    text maybe empty, so clients can time the first token), one finish chunk per choice, usage, [DONE].
    Everything due at one wake-up goes out in one write. Once every choice has had its first token, the
    stream sleeps `interval` s after each write before it takes more text (a choice that ends during that
    sleep waits for its end). Leaving early (the client disconnected, or the server shuts down)
    cancels the requests."""
    try:
        due: list[str] = []
        if envelope.chat:
            due += [envelope.event(envelope.chunk(i, role=True), include_usage) for i in range(len(requests))]
        ended: set[int] = set()
        announced: set[int] = set()  # choices whose first token has been sent (maybe with empty text)
        while len(ended) < len(requests):
            news.clear()
            for i, r in enumerate(requests):
                if i in ended:
                    continue
                text, done = r.drain()
                if text or (r.started and i not in announced):
                    announced.add(i)
                    due.append(envelope.text_event(i, text, include_usage))
                if done:
                    ended.add(i)
                    failure = _failure([r])
                    if failure is not None:
                        due.append(envelope.event(failure.body(), False))
                    else:
                        due.append(envelope.event(envelope.chunk(i, finish_reason=r.finish_reason), include_usage))
            if len(ended) < len(requests):
                if due:
                    yield "".join(due)
                    due = []
                    if interval and len(announced) == len(requests):
                        await asyncio.sleep(interval)  # the text made meanwhile goes out in one event
                await news.wait()
        if include_usage:
            due.append(envelope.event({**envelope.head(), "choices": [], "usage": _usage(requests)}, False))
        due.append("data: [DONE]\n\n")
        yield "".join(due)
    finally:
        for r in requests:
            r.cancel()


def _failure(requests: list[EngineRequest]) -> ApiError | None:
    """The error to answer for requests that ended without completing."""
    for r in requests:
        if r.finish_reason == "timeout":
            return ApiError(408, r.error, None, "request_timeout", "timeout_error")
        if r.finish_reason == "cancelled":
            return ApiError(503, r.error or "the request was cancelled", None, "cancelled", "server_error")
        if r.finish_reason == "error":
            return ApiError(500, r.error, None, None, "server_error")
    return None


def _usage(requests: list[EngineRequest]) -> dict:
    prompt = sum(len(r.prompt) for r in requests)
    completion = sum(r.completion_tokens for r in requests)
    cached = sum(r.cached_tokens for r in requests)  # prompt tokens resumed from the prefix cache
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


_WAKEUPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its _Wakeups


class _Wakeups:
    """Sets a loop's asyncio events from other threads, one `call_soon_threadsafe` per batch: the scheduler
    marks every request with news during a step, the loop wakes once and sets them all."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.marked: set[asyncio.Event] = set()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Wakeups:
        wakeups = _WAKEUPS.get(loop)
        if wakeups is None:
            wakeups = _WAKEUPS[loop] = cls(loop)
        return wakeups

    def mark(self, event: asyncio.Event) -> None:
        with self.lock:
            first = not self.marked
            self.marked.add(event)
        if first:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                self.loop.call_soon_threadsafe(self._set_marked)

    def _set_marked(self) -> None:
        with self.lock:
            events, self.marked = self.marked, set()
        for event in events:
            event.set()


_TEXT_MARK = "\x00text\x00"  # stands for a chunk's text while its template is made
_TEXT_MARK_JSON = json.dumps(_TEXT_MARK)
_json_string = json.encoder.encode_basestring_ascii  # json.dumps of a str (ensure_ascii), without its checks


class _Envelope:
    """The OpenAI response objects of one request (completion or chat, whole or streamed)."""

    def __init__(self, chat: bool, model_name: str, stream: bool):
        self.chat, self.model_name = chat, model_name
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
        self.created = int(time.time())
        self._text_templates: dict[tuple[int, bool], tuple[str, str] | None] = {}

    def text_event(self, index: int, text: str, include_usage: bool) -> str:
        """`event(chunk(index, text=text), include_usage)`, the same characters, from a template made once per
        choice: only the text is JSON-encoded per event (a stream's most frequent event)."""
        key = (index, include_usage)
        if key not in self._text_templates:
            whole = self.event(self.chunk(index, text=_TEXT_MARK), include_usage)
            parts = whole.split(_TEXT_MARK_JSON)
            # A model name holding the mark cannot be templated: its events are built whole.
            self._text_templates[key] = (parts[0], parts[1]) if len(parts) == 2 else None
        template = self._text_templates[key]
        if template is None:
            return self.event(self.chunk(index, text=text), include_usage)
        return template[0] + _json_string(text) + template[1]

    def head(self) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model_name}

    def response(self, outputs: list[tuple[str, str]], usage: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": reason} for i, (text, reason) in enumerate(outputs)]
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(outputs)]
        return {**self.head(), "choices": choices, "usage": usage}

    def chunk(self, index: int, text: str | None = None, finish_reason: str | None = None, role: bool = False):
        if self.chat:
            delta = {"role": "assistant"} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self.head(), "choices": [choice]}

    @staticmethod
    def event(payload: dict, include_usage: bool) -> str:
        if include_usage:
            payload = {**payload, "usage": None}
        return f"data: {json.dumps(payload)}\n\n"
