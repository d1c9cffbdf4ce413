"""`sft serve` for a causal-LM run: OpenAI's chat completions API, so the `openai` client (and whatever speaks it)
talks to the tuned model unchanged.

    POST /v1/chat/completions   messages, model, max_tokens (or max_completion_tokens), temperature, top_p, seed,
                                stop (a string or up to 4), stream (server-sent events: OpenAI's chunks, then
                                `data: [DONE]`; stream_options.include_usage adds the usage chunk), n=1
    GET  /v1/models             the one model: the run, named by its folder's name (`runs/chat` -> "chat")
    GET  /health                {"status": "ok"} and the batching counters
    GET  /metadata              the run (backbone, max_length, its generation settings, end tokens), limits, batching

A setting a request leaves out is the run's own (its recipe's `generation:`). Prompts are rendered with the chat
template the run trained with; an answer ends at the trained end-of-turn token or at a `stop` string (not included),
finish_reason "stop", or after max_tokens, "length". Answers are stripped as `sft predict` strips them.

Every bad request gets OpenAI's error shape {"error": {"message", "type", "param", "code"}} with a 4xx status, so the
`openai` client raises its typed errors (BadRequestError 400, NotFoundError 404, APIStatusError 413), and the server
goes on serving: unknown model (404), bad JSON, missing or empty messages, a role other than system, user and
assistant, content that is not text, a conversation not ending with a user turn, max_tokens outside 1..the run's
max_length, a prompt and max_tokens over the model's context, n != 1, temperature outside 0..2, top_p outside (0, 1],
parameters this server does not implement (tools, logprobs, penalties; 400), a body over the limit (413).

Batching (the design, measured in bench/serve_lm.py): requests are generated together, one token per step for the
whole batch, by one worker thread (one model call at a time, as batching.py explains); between two steps, requests
that arrived join the batch (continuous batching; sft.tasks.causal_lm.serving has the KV cache) and finished ones
leave it. A batch starting from empty waits up to --max-wait-ms for company; --max-batch caps its rows. Streaming and
not are the same path: the worker hands each request its new text after every step through its own asyncio queue
(`call_soon_threadsafe`); a streamed request whose client goes away leaves the batch at the next step.
--max-items does not apply here (one conversation per request).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from sft.errors import UserError
from sft.serve.limits import BadRequest, Limits, read_body

ROLES = ("system", "user", "assistant")
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}  # no effect on the answer
DEFAULT_ONLY = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False,),
                "top_logprobs": (0,), "logit_bias": ({},), "tools": ([],), "functions": ([],),
                "response_format": ({"type": "text"},)}  # accepted only at their defaults
KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream",
         "stream_options", "n", "tool_choice", "function_call"}


class ApiError(Exception):
    """A request refused with OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_chat(data, predictor) -> dict:
    """A chat completion request checked against the run: its messages, prompt tokens and settings."""
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object")
    for key, value in data.items():
        if key in DEFAULT_ONLY and value is not None and value not in DEFAULT_ONLY[key]:
            raise ApiError(400, f"{key} is not supported by this server", key, "unsupported_parameter")
        if key not in KNOWN and key not in IGNORED and key not in DEFAULT_ONLY:
            raise ApiError(400, f"unrecognized request argument: {key}", key, "unknown_parameter")
    if data.get("tool_choice") not in (None, "none") or data.get("function_call") not in (None, "none"):
        raise ApiError(400, "tools are not supported by this server", "tool_choice", "unsupported_parameter")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must name the model (GET /v1/models lists it)", "model", "missing_required_parameter")
    if model != predictor.model_id:
        raise ApiError(404, f"the model {model!r} does not exist; this server has {predictor.model_id!r}", "model",
                       "model_not_found")
    messages = _messages(data.get("messages"))
    n = data.get("n")
    if n is not None and (not _integer(n) or n != 1):
        raise ApiError(400, f"n={n!r}: this server gives one choice per request (n=1)", "n")
    gen = predictor.defaults
    limit_key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = data.get(limit_key)
    if max_tokens is not None and (not _integer(max_tokens) or not 1 <= max_tokens <= predictor.max_new_tokens):
        raise ApiError(400, f"{limit_key}={max_tokens!r}: must be an integer from 1 to {predictor.max_new_tokens} "
                            f"(the run's max_length)", limit_key)
    temperature = _number(data, "temperature", gen.temperature, lambda x: 0 <= x <= 2, "from 0 to 2")
    top_p = _number(data, "top_p", gen.top_p, lambda x: 0 < x <= 1, "above 0 and at most 1")
    seed = data.get("seed")
    if seed is not None and not _integer(seed):
        raise ApiError(400, f"seed={seed!r}: must be an integer", "seed")
    stop = data.get("stop")
    stop = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a non-empty string or a list of at most 4 of them", "stop")
    stream = data.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be an object like {\"include_usage\": true}", "stream_options")
    try:
        prompt = predictor.encode(messages)
    except UserError as e:
        raise ApiError(400, str(e), "messages") from None
    room = predictor.context - len(prompt)
    if max_tokens is None:
        max_tokens = min(gen.max_new_tokens, predictor.max_new_tokens, room)
    if room < 1 or max_tokens > room:
        raise ApiError(400, f"the prompt's {len(prompt)} tokens and max_tokens={max_tokens} are over the model's "
                            f"context of {predictor.context} tokens", "messages", "context_length_exceeded")
    return {"prompt": prompt, "max_new_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p),
            "seed": seed, "stop": stop, "stream": stream, "usage": bool(options.get("include_usage"))}


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content", where)
        if m.get("role") not in ROLES:
            raise ApiError(400, f"{where}.role={m.get('role')!r}: this model takes {', '.join(ROLES)}",
                           f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string", f"{where}.content")
        if m.get("tool_calls"):
            raise ApiError(400, f"{where}: tool calls are not supported by this server", f"{where}.tool_calls")
        out.append({"role": m["role"], "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, f"the last message must be the user's (it is {out[-1]['role']!r}): the model answers it",
                       "messages")
    return out


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(data: dict, key: str, default: float, ok, says: str) -> float:
    x = data.get(key)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not ok(x):
        raise ApiError(400, f"{key}={x!r}: must be a number {says}", key)
    return x


class Job:
    """One request in the worker's hands: the worker puts (text, finish_reason, tokens) or an exception on its
    queue from its own thread; `done` tells the worker the client needs no more."""

    def __init__(self, request, loop: asyncio.AbstractEventLoop):
        self.request, self.loop = request, loop
        request.tag = self
        self.queue: asyncio.Queue = asyncio.Queue()
        self.done = False

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class Scheduler:
    """The one thread that runs the model: admits waiting requests into the batch, steps it, hands out the text."""

    def __init__(self, predictor, max_batch: int, max_wait_ms: float):
        self.predictor, self.max_batch, self.max_wait = predictor, max_batch, max_wait_ms / 1000
        self.incoming: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="sft-model", daemon=True)
        self.stopping = False
        self.steps = self.stepped_rows = self.prefills = self.requests = self.tokens = self.largest = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.incoming.put(None)

    def submit(self, job: Job) -> None:
        self.incoming.put(job)

    def stats(self) -> dict:
        return {"requests": self.requests, "tokens": self.tokens, "steps": self.steps, "prefills": self.prefills,
                "largest_batch": self.largest, "waiting": self.incoming.qsize(),
                "mean_batch": round(self.stepped_rows / self.steps, 2) if self.steps else 0.0,
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000,
                "batching": self.predictor.batching}

    def _admit(self, running: int) -> list[Job]:
        """Waiting requests for the batch: when it is empty, wait for one and up to max_wait for more; when it runs,
        those already waiting (continuous batching), or none (static)."""
        jobs = []
        if running == 0:
            first = self.incoming.get()
            if first is None:
                return []
            jobs.append(first)
            deadline = time.monotonic() + self.max_wait
        elif not self.predictor.continuous:
            return []
        while running + len(jobs) < self.max_batch:
            try:
                left = deadline - time.monotonic() if running == 0 else 0
                job = self.incoming.get(timeout=left) if left > 0 else self.incoming.get_nowait()
            except queue.Empty:
                break
            if job is None:
                break
            jobs.append(job)
        return [j for j in jobs if not j.done]

    def _run(self) -> None:
        batch = self.predictor.batch()
        while not self.stopping:
            jobs = self._admit(len(batch))
            try:
                batch.drop(lambda s: s.request.tag.done)
                if jobs:
                    self.prefills += 1
                    self._hand_out(batch.join([j.request for j in jobs]))
                if len(batch):
                    self.steps, self.stepped_rows = self.steps + 1, self.stepped_rows + len(batch)
                    self.largest = max(self.largest, len(batch))
                    self._hand_out(batch.step())
            except Exception as e:  # the model failed: these requests get a 500, the worker goes on
                for job in dict.fromkeys([s.request.tag for s in batch.rows] + jobs):
                    job.put(e)
                batch.clear()

    def _hand_out(self, pieces) -> None:
        for sequence, text in pieces:
            if sequence.finish:  # counted first: the answer may be out before the next line runs
                self.requests, self.tokens = self.requests + 1, self.tokens + sequence.sampled
            if text or sequence.finish:
                sequence.request.tag.put((text, sequence.finish, sequence.sampled))


def build_openai_app(predictor, limits: Limits):
    """The FastAPI application around a causal-LM run's predictor (sft.tasks.causal_lm.serving.ChatPredictor)."""
    scheduler = Scheduler(predictor, limits.max_batch, limits.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title=f"sft: {predictor.model_id}", lifespan=lifespan,
                  description="A fine-tuned language model behind OpenAI's chat completions API.")

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        code = "not_found" if error.status_code == 404 else None
        return JSONResponse(ApiError(error.status_code, str(error.detail), code=code).body(),
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, error: Exception):  # still JSON; uvicorn logs the traceback, the server goes on
        body = ApiError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **scheduler.stats()}

    @app.get("/metadata")
    async def metadata() -> dict:
        return {**predictor.metadata(), "limits": asdict(limits)}

    def model_card() -> dict:
        return {"id": predictor.model_id, "object": "model", "created": predictor.created, "owned_by": "sft"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict:
        if model != predictor.model_id:
            raise ApiError(404, f"the model {model!r} does not exist; this server has {predictor.model_id!r}",
                           "model", "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", openapi_extra=CHAT_BODY)
    async def chat(request: Request):
        try:
            body = await read_body(request, limits.max_body)
        except BadRequest as e:
            if e.status == 413:
                raise ApiError(413, e.message, code="request_too_large") from None
            raise ApiError(400, "empty request body: send a chat completion request as JSON") from None
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None
        asked = parse_chat(data, predictor)
        job = Job(predictor.request(asked["prompt"], asked["max_new_tokens"], asked["temperature"], asked["top_p"],
                                    asked["seed"], asked["stop"]), asyncio.get_running_loop())
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": predictor.model_id}
        scheduler.submit(job)

        def usage(tokens: int) -> dict:
            return {"prompt_tokens": len(asked["prompt"]), "completion_tokens": tokens,
                    "total_tokens": len(asked["prompt"]) + tokens}

        if not asked["stream"]:
            try:
                text, finish, tokens = await _collect(job)
            finally:
                job.done = True
            return {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                 "finish_reason": finish}], "usage": usage(tokens)}

        def chunk(delta: dict, finish: str | None = None) -> str:
            data = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(data)}\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    item = await job.queue.get()
                    if isinstance(item, Exception):
                        error = ApiError(500, f"internal error: {type(item).__name__}: {item}", kind="server_error")
                        yield f"data: {json.dumps(error.body())}\n\n"
                        break
                    text, finish, tokens = item
                    if text:
                        yield chunk({"content": text})
                    if finish:
                        yield chunk({}, finish)
                        if asked["usage"]:
                            yield f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage(tokens)})}\n\n"  # noqa: E501
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.done = True

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def _collect(job: Job) -> tuple[str, str, int]:
    parts = []
    while True:
        item = await job.queue.get()
        if isinstance(item, Exception):
            raise ApiError(500, f"internal error: {type(item).__name__}: {item}", kind="server_error")
        text, finish, tokens = item
        parts.append(text)
        if finish:
            return "".join(parts), finish, tokens


CHAT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string", "description": "the run's id (GET /v1/models)"},
        "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"type": "string", "enum": list(ROLES)}, "content": {"type": "string"}}}},
        "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "seed": {"type": "integer"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "stream": {"type": "boolean"}, "n": {"type": "integer", "enum": [1]}}}}}}}
