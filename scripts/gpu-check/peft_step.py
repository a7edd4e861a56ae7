#!/usr/bin/env python3
"""PEFT side of the GPU check: the same training step as scripts/gpu-check's bench, in PyTorch + PEFT.

A MiniLM-L6-v2-shaped BertModel (vocab 30522, hidden 384, 6 layers, 12 heads, intermediate 1536) built from its
config with random weights (no downloads), mean pooling over the last hidden state, a Linear(384, 2) head, cross
entropy, AdamW(lr=1e-4); batch 32 x 128 tokens by default. Variants: LoRA r=8, alpha=16 on query,value (+ the head)
and full fine-tuning, float32, SDPA attention (as our BertModel); warm-up 3 steps, then timed steps with
torch.cuda.synchronize() around them. Prints one line per variant and writes JSON to --out.
"""
import argparse
import json
import platform
import time

import torch
from torch import nn


def build(variant, device):
    from transformers import BertConfig, BertModel

    torch.manual_seed(1234)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1, attn_implementation="sdpa")
    bert = BertModel(config, add_pooling_layer=False)
    head = nn.Linear(384, 2)
    if variant.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        if variant.endswith("bf16_base"):
            bert = bert.to(torch.bfloat16)
        bert = get_peft_model(bert, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0))
        if variant.endswith("bf16_base"):
            for name, p in bert.named_parameters():
                if "lora_" in name:
                    p.data = p.data.float()  # fp32 LoRA factors over the bf16 frozen base, as in our bench
    return bert.to(device), head.to(device)


def time_steps(variant, device, batch, seq, steps, warmup):
    bert, head = build(variant, device)
    params = [p for p in list(bert.parameters()) + list(head.parameters()) if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in list(bert.parameters()) + list(head.parameters()))
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    labels = torch.randint(0, 2, (batch,), generator=g).to(device)
    bert.train(); head.train()
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1)
        loss = nn.functional.cross_entropy(head(pooled.float()), labels)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1000.0 / steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    del bert, head, opt
    return ms, trainable, total, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="peft_step.json")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (tiny sizes; exercises the script only)")
    a = ap.parse_args()
    import peft
    import transformers

    cuda = torch.cuda.is_available() and not a.cpu
    device = torch.device("cuda" if cuda else "cpu")
    batch, seq, steps, warmup = (a.batch, a.seq, a.steps, 3) if cuda else (2, 16, 2, 1)
    print(f"peft_step: torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, "
          f"peft {peft.__version__}, device {device}, batch {batch} x {seq}, {warmup} warm-up + {steps} timed steps")
    rows = []
    for variant in ["lora_qv_r8_fp32", "full_fp32", "lora_qv_r8_bf16_base"]:
        ms, trainable, total, peak = time_steps(variant, device, batch, seq, steps, warmup)
        tps = batch * seq / (ms / 1000.0)
        print(f"  {variant:<22} {ms:9.2f} ms/step  {tps:12.0f} tokens/s  trainable {trainable:,} of {total:,}"
              + (f"  peak {peak / 2**20:.0f} MiB" if peak else ""))
        rows.append(dict(variant=variant, ms_per_step=ms, tokens_per_s=tps, trainable=trainable, total=total,
                         peak_bytes=peak))
    ratio = rows[1]["ms_per_step"] / rows[0]["ms_per_step"]
    print(f"  full / LoRA step time: {ratio:.2f}")
    result = dict(torch=torch.__version__, cuda=torch.version.cuda, transformers=transformers.__version__,
                  peft=peft.__version__, device=str(device),
                  gpu=torch.cuda.get_device_name(0) if cuda else platform.processor(), batch=batch, seq=seq,
                  steps=steps, warmup=warmup, rows=rows, full_over_lora=ratio)
    with open(a.out + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    import os
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
