"""`sft serve` on a causal-LM run: the real server process spoken to with the official `openai` client — answers
streamed and not equal to `sft predict`'s, concurrent requests batched and answered as when alone, stop strings and
max_tokens with their finish_reason, and bad requests refused with OpenAI's typed errors while the server goes on."""

import json
import re
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import sft
from tests.serve.conftest import Server

openai = pytest.importorskip("openai")
ANSWER = "Sure, the answer is yes."


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tiny_causal_lm):
    """The tiny Llama trained (full, 4 epochs) to answer every `n=N` with ANSWER: greedy answers are known, sampled
    ones vary. On one thread: a 64-wide model gains nothing from a second one and loses several times over when the
    cores are busy with other work."""
    import torch
    from sft import load_recipe
    from sft.tasks import get_task
    from sft.training.fit import fine_tune
    tmp = tmp_path_factory.mktemp("chat")
    for name, numbers in (("train", range(48)), ("test", range(100, 104))):
        rows = [{"messages": [{"role": "user", "content": f"n={n}"}, {"role": "assistant", "content": ANSWER}]}
                for n in numbers]
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(None, [
        "task=causal-lm", f"data.train={tmp / 'train.jsonl'}", f"data.test={tmp / 'test.jsonl'}",
        f"model.backbone={tiny_causal_lm}", "data.max_length=64", "data.batch_size=4", "trainer.epochs=4",
        "strategy.name=full", "optim.lr=1e-2", "trainer.progress=false", "generation.max_new_tokens=16",
        f"run_dir={tmp / 'run'}", f"cache_dir={tmp / 'cache'}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fine_tune(get_task("causal-lm"), recipe)
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


@pytest.fixture(scope="module")
def server(lm_run, tmp_path_factory):
    server = Server(lm_run, tmp_path_factory.mktemp("serve-lm"), "--max-batch", "8", "--max-wait-ms", "20",
                    "--max-body-mb", "0.05", env={"OMP_NUM_THREADS": "1"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def ask(client, prompt: str, stream: bool = False, **settings):
    """(content, finish_reason, usage) of one chat completion; streamed ones put together from their chunks."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        r = client.chat.completions.create(model="run", messages=messages, **settings)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    parts, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="run", messages=messages, stream=True,
                                                stream_options={"include_usage": True}, **settings):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    return "".join(parts), finish, usage


def test_the_run_is_the_one_model(server, client):
    assert [m.id for m in client.models.list().data] == ["run"]
    assert client.models.retrieve("run").owned_by == "sft"
    status, meta = server.get("/metadata")
    assert status == 200 and meta["model"] == "run" and "<|im_end|>" in meta["end_tokens"]
    assert meta["generation"]["max_new_tokens"] == 16 and meta["batching"] == "continuous"


def test_answers_streamed_and_not_equal_sft_predict(lm_run, client):
    prompts = ["n=7", "n=123456", "What is the capital of France?"]
    rows = json.loads(sft("predict", lm_run, *sum((["--prompt", p] for p in prompts), []), "--seed", "3",
                          "--format", "json").output)
    assert rows[0]["answer"] == ANSWER
    for prompt, row in zip(prompts, rows):
        for stream in (False, True):
            content, finish, usage = ask(client, prompt, stream, seed=3)
            assert content == row["answer"], (prompt, stream)
            assert finish in ("stop", "length") and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    content, finish, usage = ask(client, "n=7", True)
    assert (content, finish) == (ANSWER, "stop") and usage.completion_tokens == 8  # 7 tokens and <|im_end|>


def test_concurrent_requests_are_batched_and_answered_as_alone(server, client):
    """Greedy and seeded sampled requests of several prompt lengths: the same answers alone and together (each row
    samples with its own seeded generator; padding changes the logits by float rounding only, far below a sampling
    or argmax boundary here)."""
    jobs = [(f"n={10 ** (i % 6)}" + " please" * (i % 3), i % 2 == 1, i % 4 >= 2,
             dict(max_tokens=12, temperature=1.5 if i % 2 else 0.0, seed=i)) for i in range(12)]
    alone = [ask(client, p, stream, **s)[:2] for p, _, stream, s in jobs]
    assert len({a for a, _ in alone}) > 2  # the sampled answers differ from each other: a real comparison
    before = server.get("/health")[1]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: ask(client, job[0], job[2], **job[3])[:2], jobs))
    assert together == alone
    after = server.get("/health")[1]
    assert after["requests"] - before["requests"] == len(jobs) and after["largest_batch"] >= 4
    assert after["steps"] - before["steps"] < after["tokens"] - before["tokens"]  # steps shared by several rows


def test_stop_strings_and_max_tokens(client):
    for stream in (False, True):
        assert ask(client, "n=3", stream, stop="answer")[:2] == ("Sure, the", "stop")
        assert ask(client, "n=3", stream, stop=["nothing", " is", "yes"])[:2] == ("Sure, the answer", "stop")
        content, finish, usage = ask(client, "n=3", stream, max_tokens=2)
        assert (content, finish, usage.completion_tokens) == ("Sure,", "length", 2)
    assert ask(client, "n=3", max_tokens=8)[:2] == (ANSWER, "stop")  # the end-of-turn token is the 8th


def test_bad_requests_get_typed_errors_and_the_server_keeps_serving(server, client):
    user = [{"role": "user", "content": "n=1"}]
    cases = [
        (dict(model="gpt-4o"), openai.NotFoundError, "'gpt-4o' does not exist"),
        (dict(messages=[]), openai.BadRequestError, "non-empty list"),
        (dict(messages=[{"role": "tool", "content": "x"}]), openai.BadRequestError, "role='tool'"),
        (dict(messages=[{"role": "user"}]), openai.BadRequestError, "content must be a string"),
        (dict(messages=[*user, {"role": "assistant", "content": "ok"}]), openai.BadRequestError, "last message"),
        (dict(max_tokens=0), openai.BadRequestError, "from 1 to 64"),
        (dict(max_tokens=65), openai.BadRequestError, "from 1 to 64"),
        (dict(n=2), openai.BadRequestError, "n=1"),
        (dict(temperature=2.5), openai.BadRequestError, "temperature"),
        (dict(top_p=0), openai.BadRequestError, "top_p"),
        (dict(stop=["a", "b", "c", "d", "e"]), openai.BadRequestError, "stop"),
        (dict(logprobs=True), openai.BadRequestError, "not supported"),
        (dict(stream=True, max_tokens=-1), openai.BadRequestError, "max_tokens"),
        (dict(messages=[{"role": "user", "content": "n=1 " * 300}]), openai.BadRequestError, "context of 512"),
    ]
    for settings, error, says in cases:
        with pytest.raises(error) as caught:
            client.chat.completions.create(**{"model": "run", "messages": user, **settings})
        assert says in caught.value.message and caught.value.status_code in (400, 404), settings
        assert caught.value.code == ("model_not_found" if "model" in settings else caught.value.code)
    for body, status, says in ((b"{not json", 400, "not valid JSON"), (b"", 400, "empty request body"),
                               (b"[1]", 400, "must be an object"), (b"x" * 60_000, 413, "over the limit")):
        code, answer = server.request("/v1/chat/completions", body, "application/json")
        error = json.loads(answer)["error"]
        assert code == status and says in error["message"] and set(error) == {"message", "type", "param", "code"}
    code, answer = server.request("/v1/nowhere")
    assert code == 404 and "error" in json.loads(answer)
    assert server.process.poll() is None
    assert ask(client, "n=1")[:2] == (ANSWER, "stop")


def test_streamed_pieces_add_up_across_split_characters_and_stop_strings(tiny_causal_lm):
    """Tokens that end inside a UTF-8 character, trailing white space and the start of a stop string are held back
    until settled: the pieces never carry U+FFFD or a stop string's start, and add up to the answer."""
    from transformers import AutoTokenizer
    from sft.tasks.causal_lm.serving import Request, Sequence
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    text = " héllo 🙂 wörld,  naïve café 日本語 \n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(len(ids)))  # a character split
    for stop, answer in (([], text.strip()), (["café"], "héllo 🙂 wörld,  naïve"), (["🙂", "x"], "héllo")):
        sequence = Sequence(Request([0], 100, stop=stop), tokenizer, end_ids={2})
        pieces = []
        for token in ids + [2]:
            if not sequence.finish:
                pieces.append(sequence.push(token))
        assert "".join(pieces) == sequence.answer == answer and sequence.finish == "stop"
        assert not any("\ufffd" in p or any(s[:2] in p for s in stop) for p in pieces)


def test_the_deploy_page_s_python_example_runs_as_written(server, capsys):
    """docs/deploy.md's `openai` example, pointed at this server and its model name: both answers are printed."""
    page = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    code = re.search(r"```python\n(from openai.*?)```", page, re.S).group(1)
    assert "http://127.0.0.1:8003/v1" in code and 'model="instruct-fortunes"' in code
    exec(code.replace("http://127.0.0.1:8003", server.url).replace('"instruct-fortunes"', '"run"'), {})
    first, streamed = capsys.readouterr().out.split("\n", 1)  # the first answer, then the streamed one
    assert first.strip() and streamed.strip()
