"""`sft serve RUN`: a finished run over HTTP, on FastAPI + uvicorn, with our own dynamic batching (batching.py).

    POST /predict    images as multipart `file` parts or JSON {"images": [base64, ...]}; texts as JSON
                     {"texts": [...]}; the run's parameters as JSON fields or form fields beside them. Answers
                     {"results": [one answer per item]}, as the task's predictor shapes it:
                       classification (top_k)                {"predictions": [{label, probability}]}
                       segmentation (overlay)                {"shares": {class: share}, "mask": PNG, width, height,
                                                              "overlay": PNG when asked}
                       detection (score, max_detections)     {"detections": [{label, score, xyxy}], width, height}
    GET  /health     {"status": "ok"} and the batching counters
    GET  /metadata   task, classes, preprocessing, weights id, engine, limits
    GET  /docs       the OpenAPI page (/openapi.json), with the run's own parameters

Each task's predictor (sft.tasks.base.Predictor) declares its parameters as a pydantic model; the server validates
them (JSON values as JSON types, form fields and JSON strings converted from text) and hands them to its `answer`.
Every bad request gets a 4xx JSON answer {"error": "..."} and the server goes on serving: an empty body (400), bad
JSON or base64 (400), a body over the limit (413), a content type other than JSON or multipart (415), wrong field
names, too many items, a bad parameter (named, with what it expects), an item that is not an image (422).

Why FastAPI + uvicorn rather than LitServe (both install cleanly here): LitServe batches *requests* (one request is
one item), runs the model in separate worker processes fed through queues, and owns the request decoding; here a
request may carry up to `max_items` items that join other requests' batches, the size limit and every error answer
are ours, and the whole server is one process, which matters on a 2-core machine. The batcher that costs is 80 lines
(batching.py) with its own tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import socket
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException

from sft.errors import UserError
from sft.serve.batching import MicroBatcher
from sft.serve.limits import BadRequest, Limits, read_body
from sft.serve.openai_api import build_openai_app
from sft.tasks import task_of_run


def predict_body(inputs: str, params: type[BaseModel]) -> dict:
    """The OpenAPI description of POST /predict's body for a run taking `inputs`, with its parameters."""
    props = params.model_json_schema().get("properties", {})
    items = ({"images": {"type": "array", "items": {"type": "string", "format": "byte"},
                         "description": "images, base64 (or data URLs)"}} if inputs == "image" else
             {"texts": {"type": "array", "items": {"type": "string"}, "description": "texts"}})
    content = {"application/json": {"schema": {"type": "object", "additionalProperties": False,
                                               "required": list(items), "properties": {**items, **props}}}}
    if inputs == "image":
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}}, **props}}}
    return {"requestBody": {"required": True, "content": content}}


def build_app(predictor, limits: Limits):
    """The FastAPI application around a task's predictor (sft.tasks.base.Predictor)."""
    batcher = MicroBatcher(predictor.run, limits.max_batch, limits.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    meta = predictor.metadata()
    app = FastAPI(title=f"sft: {meta['task']}", lifespan=lifespan,
                  description=f"A fine-tuned {meta['task']} model ({len(meta.get('classes', []))} classes).")

    @app.exception_handler(BadRequest)
    async def bad_request(request, error: BadRequest):
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, error: Exception):  # still JSON; uvicorn logs the traceback, the server goes on
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **batcher.stats()}

    @app.get("/metadata")
    async def metadata() -> dict:
        return {**meta, "limits": asdict(limits)}

    @app.post("/predict", openapi_extra=predict_body(predictor.inputs, predictor.params))
    async def predict(request: Request) -> dict:
        items, params = await read_request(request, predictor, limits)
        try:
            prepared = await asyncio.to_thread(_prepare_all, predictor.prepare, items)
        except UserError as e:
            raise BadRequest(422, str(e)) from None
        outputs = await batcher.submit(prepared)
        try:  # off the event loop: an answer may encode images (a segmentation mask as PNG)
            return {"results": await asyncio.to_thread(lambda: [predictor.answer(o, params) for o in outputs])}
        except UserError as e:  # a parameter the run cannot answer (e.g. a coverage it has no fit for)
            raise BadRequest(422, str(e)) from None

    return app


def _prepare_all(prepare: Callable, items: list) -> list:
    prepared = []
    for i, item in enumerate(items):
        try:
            prepared.append(prepare(item))
        except UserError as e:
            raise UserError(f"item {i}: {e}") from None
    return prepared


async def read_request(request, predictor, limits: Limits) -> tuple[list, BaseModel]:
    """(items, parameters) of a /predict request: raw image bytes or texts, checked against the run's kind, and the
    predictor's parameters validated."""
    body = await read_body(request, limits.max_body)
    inputs, names = predictor.inputs, list(predictor.params.model_fields)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(400, f"body is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise BadRequest(422, "the JSON body must be an object")
        field = "images" if inputs == "image" else "texts"
        unknown = sorted(set(data) - {field, *names})
        if unknown or field not in data:
            takes = ", ".join([f'"{field}": [...]'] + [f'"{n}": {json.dumps(f.default)}'
                                                       for n, f in predictor.params.model_fields.items()])
            raise BadRequest(422, f"unknown field(s) {unknown}; this run takes {{{takes}}}"
                             if unknown else f"missing field {field!r}: this run takes {{{takes}}}")
        items = data[field]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise BadRequest(422, f"{field!r} must be a list of strings")
        _check_count(items, limits)
        if inputs == "image":
            items = [_base64(i, n) for n, i in enumerate(items)]
        raw = {n: data[n] for n in names if n in data}
    elif kind == "multipart/form-data":
        if inputs != "image":
            raise BadRequest(422, "this run classifies texts: send JSON {\"texts\": [...]}")

        async def replay():  # the body was read under the size limit; the form parser reads it again from here
            return {"type": "http.request", "body": body, "more_body": False}
        try:
            form = await Request(request.scope, replay).form(max_files=limits.max_items + 1)
        except Exception as e:  # malformed multipart (the parser's own error types)
            raise BadRequest(400, f"cannot read the multipart body ({e})") from None
        unknown = sorted({k for k in form.keys() if k != "file" and k not in names})
        if unknown:
            also = f" (and the parameters {', '.join(names)})" if names else ""
            raise BadRequest(422, f"unknown field(s) {unknown}; send images as `file` parts{also}")
        items = [await f.read() if hasattr(f, "read") else None for f in form.getlist("file")]
        if any(i is None for i in items):
            raise BadRequest(422, "`file` must be a file part, not a text field")
        raw = {}
        for name in names:
            values = form.getlist(name)
            if len(values) > 1 or (values and not isinstance(values[0], str)):
                raise BadRequest(422, f"parameter {name}: give it once, as a text field")
            if values:
                raw[name] = values[0]
    else:
        raise BadRequest(415, f"content type {kind or 'none'!r}: send application/json or multipart/form-data")
    _check_count(items, limits)
    return items, read_params(predictor.params, raw)


def read_params(model: type[BaseModel], raw: dict) -> BaseModel:
    """The request's parameters as `model`: a JSON value must be of the parameter's type (true is not 1, 2.5 is not
    an integer); text (form fields, JSON strings) is converted. A wrong one is named with what it expects (422)."""
    values = {}
    for name, value in raw.items():
        try:
            values[name] = _adapter(model, name).validate_python(value, strict=not isinstance(value, str))
        except ValidationError as e:
            error = e.errors()[0]
            raise BadRequest(422, f"parameter {name}: {error['msg'].replace('Input should', 'should')}, "
                                  f"got {value!r}") from None
    return model.model_validate(values)


@lru_cache(maxsize=None)
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    field = model.model_fields[name]
    return TypeAdapter(Annotated[field.annotation, field])


def _check_count(items: list, limits: Limits) -> None:
    if not items:
        raise BadRequest(422, "no items to predict")
    if len(items) > limits.max_items:
        raise BadRequest(422, f"too many items: {len(items)} (at most {limits.max_items} per request)")


def _base64(text: str, index: int) -> bytes:
    if "," in text[:100] and text.startswith("data:"):  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"item {index}: not valid base64") from None


def run_server(run_dir: str | Path, options, host: str, port: int, limits: Limits,
               announce: Callable[[str], None] = print) -> None:
    """Load the run as its task's serve `options` say (the engine) and serve it until interrupted."""
    import uvicorn  # deferred: only `sft serve` needs it

    if limits.max_batch < 1 or limits.max_items < 1 or limits.max_body < 1:
        raise UserError("--max-batch, --max-items and --max-body-mb must be positive")
    with socket.socket() as probe:  # before the model loads: a taken port is a one-line error, not a traceback
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"{host}:{port}: cannot listen there ({e.strerror}); choose another --port or --host") \
                from None
    predictor = task_of_run(run_dir).predictor(run_dir, options)
    if getattr(predictor, "api", "predict") == "openai":  # a language model: the OpenAI-compatible API
        app = build_openai_app(predictor, limits)
    else:
        app = build_app(predictor, limits)
    announce(f"http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
