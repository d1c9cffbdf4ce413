"""`sft train | eval | predict` for task causal-lm on a tiny random Llama with SmolLM2's tokenizer: the run trains on
the answers, stops generating (its end-of-turn token was trained), exports a merged Hugging Face folder with the
logits of base + adapter, and refuses strategies it has no use for."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from sft.data.chat import end_tokens
from sft.tasks import get_task, load_recipe
from sft.tasks.causal_lm.export import load_tuned, read_chat_info
from sft.training.fit import fine_tune
from tests.conftest import sft


@pytest.fixture(scope="module")
def parity_set(tmp_path_factory):
    """48 short conversations to train, 8 to test, all answered "Sure." (a one-label set a tiny model learns in a
    few dozen steps)."""
    out = tmp_path_factory.mktemp("sure")
    for name, numbers in (("train", range(48)), ("test", range(100, 108))):
        rows = [{"messages": [{"role": "system", "content": "Reply."}, {"role": "user", "content": f"n={n}"},
                              {"role": "assistant", "content": "Sure."}]} for n in numbers]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def args(tmp_path, data, model, *extra):
    return ["task=causal-lm", f"data.train={data / 'train.jsonl'}", f"data.test={data / 'test.jsonl'}",
            f"model.backbone={model}", "data.max_length=96", "data.batch_size=4", "trainer.epochs=4",
            "trainer.progress=false", f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *extra]


def test_train_eval_predict_and_export(tmp_path, parity_set, tiny_causal_lm):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: causal-lm\n")
    result = sft("train", recipe, *args(tmp_path, parity_set, tiny_causal_lm, "strategy.name=full", "optim.lr=1e-2"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["strategy"] == "full" and metrics["val_loss"] < 0.5 and metrics["test_perplexity"] > 1
    assert metrics["train_answer_tokens"] > 0 and metrics["truncated_train_examples"] == 0

    # the tuned model answers with a label and stops: its end-of-turn token was trained
    (model, tokenizer), info = load_tuned(tmp_path / "run"), read_chat_info(tmp_path / "run")
    assert info.labels == ["Sure."]
    chat = [{"role": "system", "content": "Reply."}, {"role": "user", "content": "n=7"}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    stop = tokenizer.convert_tokens_to_ids(end_tokens(tokenizer))
    out = model.generate(**prompt, max_new_tokens=20, do_sample=False, eos_token_id=stop)
    out = out[0, prompt["input_ids"].shape[1]:]
    assert len(out) < 20 and int(out[-1]) in stop
    assert tokenizer.decode(out, skip_special_tokens=True) == "Sure."

    result = sft("eval", tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert summary["exact_match"] == summary["in_label_set"] == 1.0
    assert {"loss", "perplexity", "exact_match_before", "in_label_set_before"} <= set(summary)
    page = (tmp_path / "run" / "eval" / "report.html").read_text()
    assert "Generations before and after" in page and "Answers per label" in page
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert len(results["generations"]) == 8  # every test question, not only the shown ones
    sure = {r["label"]: r for r in results["answers"]}["Sure."]
    assert sure["references"] == sure["answered"] == sure["right"] == 8

    result = sft("predict", tmp_path / "run", "--prompt", "n=10", "--prompt", "n=105", "--format",
                 "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["prompt"] == "n=10" and isinstance(rows[0]["answer"], str)
    assert [r["answer"] for r in rows] == ["Sure.", "Sure."]  # batched (one prompt a token longer: left padding)
    streamed = sft("predict", tmp_path / "run", "--prompt", "n=3", "--max-new-tokens", "5")
    assert streamed.exit_code == 0 and ">>> n=3" in streamed.output


def test_lora_run_exports_merged_folder_with_the_adapter_logits(tmp_path, parity_set, tiny_causal_lm):
    from peft import PeftModel
    recipe = load_recipe(None, args(tmp_path, parity_set, tiny_causal_lm, "trainer.epochs=1", "optim.lr=1e-2",
                                    "strategy.lora_targets=[q_proj,v_proj]"))
    assert recipe.strategy.name == "lora"  # the task's default
    fine_tune(get_task("causal-lm"), recipe)
    run = tmp_path / "run"
    merged = AutoModelForCausalLM.from_pretrained(run / "model").eval()  # transformers alone
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), run / "adapter").eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])
    with torch.no_grad():
        a, b = merged(ids).logits, adapted(ids).logits
    assert (adapted.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight != 0).any()
    assert torch.allclose(a, b, atol=1e-4)

    info = tmp_path / "run" / "model.json"
    info.write_text("{not json")
    result = sft("predict", tmp_path / "run", "--prompt", "n=10")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{info}: damaged" in said and "--resume" in said, result.output


def test_auto_epochs_and_lr_are_resolved_recorded_and_kept_on_resume(tmp_path, parity_set, tiny_causal_lm,
                                                                      monkeypatch):
    """With no epochs and no lr, a small set gets enough optimizer steps and LoRA its rate; the run's recipe.yaml
    says what they resolved to, and --resume with the same recipe keeps them."""
    import yaml

    from sft.training.optim import AUTO_LR
    AUTO_STEPS = 12  # noqa: N806 - the real floor's steps take minutes even on the tiny model
    monkeypatch.setattr("sft.training.optim.AUTO_STEPS", AUTO_STEPS)
    recipe = args(tmp_path, parity_set, tiny_causal_lm, "trainer.epochs=auto", "data.batch_size=16")
    run = fine_tune(get_task("causal-lm"), load_recipe(None, recipe))
    steps = -(-43 // 16)  # 48 conversations less 10 % for validation
    assert run.metrics["epochs_auto"]["epochs"] == run.metrics["epochs"] == -(-AUTO_STEPS // steps)
    assert run.metrics["lr_auto"] == {"lr": AUTO_LR["lora"], "for": "lora"}
    saved = yaml.safe_load((run.dir / "recipe.yaml").read_text())
    assert saved["trainer"]["epochs"] == run.metrics["epochs"] and saved["optim"]["lr"] == AUTO_LR["lora"]
    again = fine_tune(get_task("causal-lm"), load_recipe(None, recipe), resume=True)
    assert again.finished_before


@pytest.mark.parametrize("strategy", ["linear-probe", "two-stage", "auto"])
def test_strategies_without_a_head_are_refused(tmp_path, parity_set, tiny_causal_lm, strategy):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: causal-lm\n")
    result = sft("train", recipe, *args(tmp_path, parity_set, tiny_causal_lm, f"strategy.name={strategy}"))
    assert result.exit_code == 2 and "strategy.name: expected 'lora', 'full', 'partial' or 'gradual'" in result.output


def test_lora_checkpoints_hold_the_adapters_and_resume_exactly(tmp_path, parity_set, tiny_causal_lm):
    """The base is a local file identified by digest: checkpoints leave it out, resume rebuilds it and ends where the
    uninterrupted run ends; a base whose weights changed since is refused, naming the digest."""
    import shutil

    from safetensors.torch import load_file, save_file
    base = tmp_path / "base"
    shutil.copytree(tiny_causal_lm, base)
    common = ("optim.lr=1e-2", "optim.scheduler=constant", "optim.warmup=0", "strategy.lora_targets=[q_proj,v_proj]")
    whole = fine_tune(get_task("causal-lm"), load_recipe(None, args(tmp_path / "a", parity_set, base,
                                                                    "trainer.epochs=2", *common)))
    part = args(tmp_path / "b", parity_set, base, "trainer.epochs=1", *common)
    fine_tune(get_task("causal-lm"), load_recipe(None, part))
    last = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["state_dict"] and all("lora_" in k for k in last["state_dict"])
    assert last["sft"]["base_weights"].startswith("sha256:")
    resumed = fine_tune(get_task("causal-lm"), load_recipe(None, [*part, "trainer.epochs=2"]), resume=True)
    x, y = load_file(whole.dir / "adapter" / "adapter_model.safetensors"), \
        load_file(resumed.dir / "adapter" / "adapter_model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert sft("eval", resumed.dir).exit_code == 0  # the exported model needs no checkpoint

    weights = load_file(base / "model.safetensors")
    save_file({k: v + 1 for k, v in weights.items()}, base / "model.safetensors", metadata={"format": "pt"})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: causal-lm\n")
    result = sft("train", recipe, *part, "trainer.epochs=3", "--resume")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "base_weights" in said, result.output


def test_lora_adapts_every_linear_projection_of_the_blocks_by_default(tiny_causal_lm, tmp_path):
    """lora_targets auto: attention and MLP projections (QLoRA's choice), never the output layer."""
    from sft.models.causal_lm import create_causal_lm
    lora = load_recipe(None, ["task=causal-lm", "data.train=x.jsonl"]).strategy
    backbone = create_causal_lm(str(tiny_causal_lm), "pretrained", 64, True, tmp_path, lora=lora)
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in backbone.module.named_parameters()
               if "lora_A" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
