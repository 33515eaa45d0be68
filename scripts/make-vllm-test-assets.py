"""Make the real-vLLM test assets from the SmolLM2 GGUF the tests already install.

Run by scripts/install-test-deps.sh with the vLLM virtual environment's Python (it needs
torch, transformers, gguf, accelerate and peft, none of which the core install has):

    OUT/smollm2-135m-instruct/   the model in Hugging Face format (safetensors + tokenizer)
    OUT/adapters/alpha/          a LoRA adapter trained to answer every question "ALPHA."
    OUT/adapters/bravo/          the same for "BRAVO."
    OUT/.complete                written last, so an interrupted run is redone

The adapters are real fine-tunes (a few dozen steps of LoRA training on CPU), so a test
can tell from an answer which adapter served it, and the base model still answers
"What is the capital of France?" with Paris. Each adapter is checked on a question it
never saw in training before the script declares success.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

MODEL_DIR = "smollm2-135m-instruct"
# r=8 on the attention projections: the rank the tests start vLLM with (--max-lora-rank 8).
LORA_RANK = 8
ADAPTERS = {"alpha": "ALPHA.", "bravo": "BRAVO."}
TRAIN_PROMPTS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Who wrote Hamlet?",
    "Why is the sky blue?",
]
# Only the last layers are adapted: backpropagation then stops there, which makes training
# several times cheaper on CPU than adapting all 30 layers, and is enough to fix the answer.
ADAPTED_LAYERS = list(range(24, 30))
TRAIN_STEPS = 12
HELD_OUT_PROMPT = "What is the largest planet in the solar system?"


def convert(gguf: Path, out: Path) -> None:
    """GGUF (Q4_1) -> Hugging Face safetensors: load dequantized, copy into a plain model."""
    folder, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out)


def _chat(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def _answer(model, tokenizer, prompt: str) -> str:
    inputs = tokenizer(_chat(tokenizer, prompt), return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def train_adapter(model_dir: Path, reply: str, out: Path, seed: int) -> str:
    """A LoRA adapter that answers every prompt with `reply`; returns its held-out answer."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    config = LoraConfig(
        r=LORA_RANK, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=ADAPTED_LAYERS,
        lora_dropout=0.0, task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    # Loss on the reply tokens only: the adapter learns what to answer, not the prompts.
    batch_ids, batch_labels = [], []
    for prompt in TRAIN_PROMPTS:
        head = tokenizer(_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        tail = tokenizer(reply + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        batch_ids.append(head + tail)
        batch_labels.append([-100] * len(head) + tail)
    width = max(len(ids) for ids in batch_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch_ids])
    labels = torch.tensor([[-100] * (width - len(x)) + x for x in batch_labels])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch_ids])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for step in range(TRAIN_STEPS):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 4 == 3:
            print(f"  step {step + 1}: loss {loss.item():.4f}", flush=True)
    model.eval()
    answer = _answer(model, tokenizer, HELD_OUT_PROMPT)
    model.save_pretrained(out)
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out: Path = args.out
    model_dir = out / MODEL_DIR
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        if out.exists():
            shutil.rmtree(out)
        convert(args.gguf, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    base_answer = _answer(base, tokenizer, "What is the capital of France?")
    print(f"base model: {base_answer!r}", flush=True)
    if "Paris" not in base_answer:
        print("the converted model does not answer Paris: conversion went wrong", file=sys.stderr)
        return 1
    for seed, (name, reply) in enumerate(ADAPTERS.items()):
        print(f"training adapter {name}", flush=True)
        answer = train_adapter(model_dir, reply, out / "adapters" / name, seed)
        print(f"adapter {name}: {answer!r}", flush=True)
        if reply.rstrip(".") not in answer:
            print(f"adapter {name} does not answer {reply!r} on a held-out question", file=sys.stderr)
            return 1
    (out / ".complete").write_text("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
