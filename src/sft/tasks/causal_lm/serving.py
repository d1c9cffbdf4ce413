"""A finished causal-LM run behind `sft serve`'s OpenAI-compatible API: the run's merged model and tokenizer, prompts
rendered with the chat template it trained with, and a batch of sequences generated together one token at a time.

Why a step loop of our own rather than `model.generate`: requests arrive while others are being generated, and
`generate` runs one fixed batch to its end, so a request that comes a moment late waits for the longest answer of
the batch before it. Here a batch holds one KV cache (transformers' DynamicCache) for its rows, left-padded: new
requests are prefilled on their own and their cache is joined to the running one (both padded on the left to the
same length), a finished row leaves the cache at once, and cache columns that only padding still uses are cut. Every
row carries its own sampling settings (temperature, top_p, its own seeded generator: a seed gives the same answer
whoever else is in the batch) and its own stop strings. Positions are counted per row from its real tokens, as
`generate` counts them, so a request alone in a batch takes exactly `generate`'s path (`sft predict`'s answer).

A model whose cache has sliding-window or other non-plain layers (Gemma 3) cannot have caches joined that simply:
it is served with static batches (requests join only an empty batch; rows still leave as they finish).

Answers are decoded from the whole sequence after every token (a token may end in the middle of a UTF-8 character,
which decodes as U+FFFD until the next one completes it) and stripped as `sft predict` strips them; what may still
change (a trailing U+FFFD, trailing white space, the start of a stop string) is held back from the stream until it
is settled, so the streamed pieces add up to the answer.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sft.data.chat import end_tokens
from sft.errors import UserError
from sft.tasks.causal_lm.export import load_tuned, read_chat_info

REPLACEMENT = "\ufffd"  # what a partial UTF-8 character decodes as


@dataclass
class Request:
    """One chat completion in the model's terms; `tag` is the caller's (what the answer goes back to)."""
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    tag: object = None


class Sequence:
    """A request being generated: its tokens, the answer so far, what of it may be sent, and why it ended."""

    def __init__(self, request: Request, tokenizer, end_ids: set[int]):
        self.request, self.tokenizer, self.end_ids = request, tokenizer, end_ids
        self.tokens: list[int] = []
        self.sampled = 0  # tokens the model gave, the end-of-turn token included (usage, max_new_tokens)
        self.sent = 0  # characters of the answer already handed out
        self.answer = ""
        self.finish: str | None = None  # "stop" | "length"
        self.generator = torch.Generator().manual_seed(request.seed if request.seed is not None
                                                       else int.from_bytes(os.urandom(8), "little") >> 1)

    def push(self, token: int) -> str:
        """Take the next token; the new text that can be handed out (all of what is left once finished)."""
        self.sampled += 1
        if token in self.end_ids:
            self.finish = "stop"
        else:
            self.tokens.append(token)
        raw = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        stops = self.request.stop
        if stops:
            found = [i for i in (raw.find(s) for s in stops) if i >= 0]
            if found:
                raw, self.finish = raw[:min(found)], "stop"
        if self.finish is None and self.sampled >= self.request.max_new_tokens:
            self.finish = "length"
        if self.finish is not None:
            self.answer = raw.strip()
            return self._take(len(self.answer))
        self.answer = raw.lstrip()
        settled = len(self.answer.rstrip(REPLACEMENT).rstrip())
        for k in range(min(settled, max((len(s) for s in stops), default=1) - 1), 0, -1):
            if any(s.startswith(self.answer[settled - k:settled]) for s in stops):
                settled -= k  # the answer ends with the start of a stop string: wait and see
                break
        return self._take(settled)

    def _take(self, end: int) -> str:
        piece = self.answer[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece


class ChatBatch:
    """The sequences generated together and their KV cache; the one thread that runs the model owns it."""

    def __init__(self, predictor: "ChatPredictor"):
        self.model, self.tokenizer, self.end_ids = predictor.model, predictor.decoder, predictor.end_ids
        self.pad_id = predictor.tokenizer.pad_token_id
        self.rows: list[Sequence] = []
        self.cache = self.mask = self.positions = self.pending = None

    def __len__(self) -> int:
        return len(self.rows)

    def _forward(self, ids, mask, positions, cache, keep: int = 1) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                         logits_to_keep=keep)
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def join(self, requests: list[Request]) -> list[tuple[Sequence, str]]:
        """Prefill `requests` (left-padded together), sample their first tokens and add them to the batch; each new
        sequence with the text it already has."""
        from transformers import DynamicCache

        width = max(len(r.prompt) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate counts them
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache)
        rows = [Sequence(r, self.tokenizer, self.end_ids) for r in requests]
        tokens = self._sample(logits, rows)
        pieces = [s.push(t) for s, t in zip(rows, tokens.tolist())]
        if not self.rows:
            self.cache, self.mask, self.positions, self.pending = cache, mask, positions[:, -1] + 1, tokens
        else:
            self._merge(cache, mask, positions[:, -1] + 1, tokens)
        self.rows += rows
        self._drop_finished()
        return list(zip(rows, pieces))

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, str]]:
        """One token for every sequence; each with its new text."""
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        logits = self._forward(self.pending[:, None], self.mask, self.positions[:, None], self.cache)
        self.positions = self.positions + 1
        self.pending = self._sample(logits, self.rows)
        pieces = [(s, s.push(t)) for s, t in zip(self.rows, self.pending.tolist())]
        self._drop_finished()
        return pieces

    def drop(self, leave) -> None:
        """Take out the sequences `leave(sequence)` is true for (their client went away)."""
        self._keep([i for i, s in enumerate(self.rows) if not leave(s)])

    def clear(self) -> None:
        self.rows, self.cache = [], None

    def _sample(self, logits: torch.Tensor, rows: list[Sequence]) -> torch.Tensor:
        tokens = logits.argmax(-1)
        for i, s in enumerate(rows):
            r = s.request
            if r.temperature > 0:
                probs = torch.softmax(logits[i] / r.temperature, -1)
                if r.top_p < 1:
                    sorted_probs, order = probs.sort(descending=True)
                    outside = sorted_probs.cumsum(-1) - sorted_probs >= r.top_p  # the first token always stays
                    probs = probs.scatter(0, order[outside], 0.0)
                tokens[i] = torch.multinomial(probs, 1, generator=s.generator)[0]
        return tokens

    def _merge(self, cache, mask, positions, tokens) -> None:
        """Join a prefilled group's cache to the running one, both padded on the left to the same length."""
        old, new = self.mask.shape[1], mask.shape[1]
        width = max(old, new)
        pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t  # noqa: E731 (dim -2, on the left)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([pad(mine.keys, width - old), pad(theirs.keys, width - new)])
            mine.values = torch.cat([pad(mine.values, width - old), pad(theirs.values, width - new)])
        self.mask = torch.cat([torch.nn.functional.pad(self.mask, (width - old, 0)),
                               torch.nn.functional.pad(mask, (width - new, 0))])
        self.positions = torch.cat([self.positions, positions])
        self.pending = torch.cat([self.pending, tokens])

    def _drop_finished(self) -> None:
        if any(s.finish for s in self.rows):
            self._keep([i for i, s in enumerate(self.rows) if not s.finish])

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        if not keep:
            return self.clear()
        index = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.positions, self.pending = self.mask[index], self.positions[index], self.pending[index]
        self.cache.batch_select_indices(index)
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # columns on the left only padding uses now
        if unused and self.joinable(self.cache):
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    @staticmethod
    def joinable(cache) -> bool:
        from transformers.cache_utils import DynamicLayer
        return all(type(layer) is DynamicLayer for layer in cache.layers)


class ChatPredictor:
    """What `sft serve` asks of a causal-LM run: its model id, limits and default settings, prompts as tokens, and
    batches to generate in (`api = "openai"`: the server speaks OpenAI's chat completions API for it)."""
    api = "openai"

    def __init__(self, run_dir: str | Path, defaults, batching: str = "continuous"):
        from transformers import DynamicCache

        self.run_dir = Path(run_dir)
        self.info = read_chat_info(self.run_dir)
        self.model, self.tokenizer = load_tuned(self.run_dir)
        self.decoder = copy.deepcopy(self.tokenizer)  # the model's thread decodes while requests are tokenized
        self.end_ids = {i for i in self.tokenizer.convert_tokens_to_ids(end_tokens(self.tokenizer)) if i is not None}
        self.model_id = self.run_dir.resolve().name
        self.created = int((self.run_dir / "model.json").stat().st_mtime)
        self.defaults = defaults  # max_new_tokens, temperature, top_p: the run's generation settings
        self.max_new_tokens = self.info.max_length  # the most one request may ask for
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 2**31
        self.continuous = batching == "continuous" and ChatBatch.joinable(DynamicCache(config=self.model.config))
        self.batching = "continuous" if self.continuous else "static"

    def metadata(self) -> dict:
        return {"task": self.info.task, "model": self.model_id, "backbone": self.info.backbone,
                "strategy": self.info.strategy, "max_length": self.info.max_length, "context": self.context,
                "generation": {"max_new_tokens": self.defaults.max_new_tokens,
                               "temperature": self.defaults.temperature, "top_p": self.defaults.top_p},
                "end_tokens": end_tokens(self.tokenizer), "batching": self.batching, "engine": "torch",
                "labels": self.info.labels, "run_dir": str(self.run_dir.resolve()),
                "model_json": asdict(self.info)}

    def encode(self, messages: list[dict]) -> list[int]:
        """A conversation (ending with a user turn) as prompt tokens, rendered as `sft predict` renders it."""
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template's own refusal (jinja's raise_exception) of these messages
            raise UserError(f"the run's chat template refuses these messages: {e}") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def request(self, prompt: list[int], max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                stop: list[str]) -> Request:
        """One chat completion as this predictor's batches take it (the server knows no model's request type)."""
        return Request(prompt, max_new_tokens, temperature, top_p, seed, stop)

    def batch(self) -> ChatBatch:
        return ChatBatch(self)
