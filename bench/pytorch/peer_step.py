#!/usr/bin/python3
"""The PyTorch peer of the MiniLM training step in bench/Microsoft.ML.Lora.Benchmarks (TrainingSuite, PeerSuite).

Runs with Debian's python3-torch (1.13, CPU) and no other package beyond numpy: a BERT encoder written here in plain
PyTorch (the eager attention of Hugging Face's BertSelfAttention), mean pooling, dropout 0.1 and a linear head; LoRA
r=8 (alpha 16) on query and value through a LoRA linear written here; AdamW (lr 1e-4); cross-entropy.

Modes:
  --serve               line protocol on stdin/stdout, used by the C# PeerSuite so that our step and this one run
                        interleaved in the same minutes. Commands (one per line), each answered by one line:
                          info                   -> JSON: torch version, threads, BLAS build info and loaded .so files
                          step lora|full|forward -> milliseconds of one step (training step, or the no-grad forward)
                          mm M K N REPS          -> median milliseconds of torch.mm([M,K], [K,N]) over REPS calls
                          onednn M K N REPS      -> the same through oneDNN (mkldnn_linear on mkldnn-layout tensors)
                          pooled PATH            -> writes the eval forward's mean-pooled output [B, H] (float32) to PATH
                          quit
  --profile lora|full|forward   torch.autograd.profiler table by op over a few steps (self CPU time)
  (no mode)             times each variant a few times and prints the medians

--weights DIR loads config.json and model.safetensors (Hugging Face layout, as BertModel.SaveHuggingFace writes them);
without it the weights are random with the MiniLM-L6 shapes. --batch FILE reads the int64 input ids [B, T] and labels
[B] (raw little-endian, header "B T") that the C# side uses; without it they are random.
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, initializer_range=0.02)


class LoraLinear(nn.Module):
    """y = x W^T + b + (x A^T) B^T * alpha / r, with W and b frozen (PEFT's default init: A kaiming-uniform, B zeros)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x).add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scaling)


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.head_size = h // self.heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.dropout = nn.Dropout(c["attention_probs_dropout_prob"])

    def forward(self, x, additive_mask):
        b, t, _ = x.shape

        def split(p):
            return p(x).view(b, t, self.heads, self.head_size).transpose(1, 2)

        q, k, v = split(self.query), split(self.key), split(self.value)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + additive_mask
        probs = self.dropout(torch.softmax(scores, dim=-1))
        return torch.matmul(probs, v).transpose(1, 2).reshape(b, t, self.heads * self.head_size)


class ResidualOutput(nn.Module):
    def __init__(self, c, inputs):
        super().__init__()
        self.dense = nn.Linear(inputs, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = SelfAttention(c)
        self.attention.output = ResidualOutput(c, c["hidden_size"])
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.output = ResidualOutput(c, c["intermediate_size"])

    def forward(self, x, additive_mask):
        attended = self.attention.output(self.attention.self(x, additive_mask), x)
        return self.output(F.gelu(self.intermediate.dense(attended)), attended)


class Bert(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(c["vocab_size"], h)
        self.embeddings.position_embeddings = nn.Embedding(c["max_position_embeddings"], h)
        self.embeddings.token_type_embeddings = nn.Embedding(c["type_vocab_size"], h)
        self.embeddings.LayerNorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])
        self.embeddings.dropout = nn.Dropout(c["hidden_dropout_prob"])
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, ids, mask, types):
        e = self.embeddings
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        x = e.word_embeddings(ids) + e.token_type_embeddings(types) + e.position_embeddings(positions)
        x = e.dropout(e.LayerNorm(x))
        additive_mask = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.encoder.layer:
            x = layer(x, additive_mask)
        return x


def mean_pool(hidden, mask):
    w = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)


class Classifier(nn.Module):
    def __init__(self, c, labels=2):
        super().__init__()
        self.bert = Bert(c)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(c["hidden_size"], labels)
        nn.init.normal_(self.classifier.weight, 0.0, c["initializer_range"])
        nn.init.zeros_(self.classifier.bias)

    def forward(self, ids, mask, types):
        return self.classifier(self.dropout(mean_pool(self.bert(ids, mask, types), mask)))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {meta['dtype']}, expected F32")
        start, end = meta["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[start:end], dtype=np.float32).copy()).reshape(meta["shape"])
    return out


def build(variant, config, weights_dir):
    torch.manual_seed(0)
    model = Classifier(config)
    if weights_dir:
        state = read_safetensors(os.path.join(weights_dir, "model.safetensors"))
        state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
        missing, unexpected = model.bert.load_state_dict(state, strict=False)
        missing = [m for m in missing if "pooler" not in m]
        if missing:
            raise ValueError(f"{weights_dir}: weights missing for {missing}")
    else:
        for name, p in model.bert.named_parameters():
            with torch.no_grad():
                if "LayerNorm.weight" in name:
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, config["initializer_range"])
    if variant == "lora":
        for p in model.bert.parameters():
            p.requires_grad = False
        for layer in model.bert.encoder.layer:
            layer.attention.self.query = LoraLinear(layer.attention.self.query, r=8, alpha=16)
            layer.attention.self.value = LoraLinear(layer.attention.self.value, r=8, alpha=16)
    return model


class Peer:
    def __init__(self, args):
        self.config = dict(MINILM)
        if args.weights:
            with open(os.path.join(args.weights, "config.json")) as f:
                self.config.update({k: v for k, v in json.load(f).items() if k in MINILM})
        if args.batch:
            with open(args.batch, "rb") as f:
                b, t = struct.unpack("<qq", f.read(16))
                ids = np.frombuffer(f.read(8 * b * t), dtype=np.int64).copy().reshape(b, t)
                labels = np.frombuffer(f.read(8 * b), dtype=np.int64).copy()
            self.ids, self.labels = torch.from_numpy(ids), torch.from_numpy(labels)
        else:
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(1000, 30000, (args.rows, args.seq), generator=g)
            self.labels = torch.randint(0, 2, (args.rows,), generator=g)
        self.mask = torch.ones_like(self.ids)
        self.types = torch.zeros_like(self.ids)
        self.models, self.optimizers = {}, {}
        for variant in ("lora", "full"):
            model = build(variant, self.config, args.weights)
            model.train()
            self.models[variant] = model
            self.optimizers[variant] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.inference = build("full", self.config, args.weights).eval()

    def step(self, variant):
        if variant == "forward":
            with torch.no_grad():
                return self.inference.bert(self.ids, self.mask, self.types)
        model, optimizer = self.models[variant], self.optimizers[variant]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(self.ids, self.mask, self.types), self.labels)
        loss.backward()
        optimizer.step()
        return loss

    def timed(self, variant):
        start = time.perf_counter()
        self.step(variant)
        return (time.perf_counter() - start) * 1000

    def pooled(self, path):
        with torch.no_grad():
            pooled = mean_pool(self.inference.bert(self.ids, self.mask, self.types), self.mask)
        tmp = path + ".tmp"
        pooled.contiguous().numpy().astype("<f4").tofile(tmp)
        os.replace(tmp, path)


def time_mm(m, k, n, reps, onednn=False):
    a, b = torch.randn(m, k), torch.randn(k, n)
    if onednn:
        # mkldnn_linear computes x·Wᵀ: W is [N, K]; both operands in oneDNN's blocked layout.
        x, w = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        call = lambda: torch._C._nn.mkldnn_linear(x, w, None)
    else:
        call = lambda: torch.mm(a, b)
    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def info(threads):
    maps = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if any(s in path for s in ("blas", "lapack", "mkl", "gomp", "iomp", "dnnl")):
                maps.add(path)
    config = torch.__config__.show()
    blas_info = next((part.split("=")[1] for part in config.replace(",", " ").split() if part.startswith("BLAS_INFO=")), "?")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "requested_threads": threads, "blas_info": blas_info, "mkldnn": torch.backends.mkldnn.is_available(),
            "mkl": torch.backends.mkl.is_available(), "loaded": sorted(maps)}


def serve(peer, threads):
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        cmd = parts[0]
        try:
            if cmd == "quit":
                break
            if cmd == "info":
                answer = json.dumps(info(threads))
            elif cmd == "step":
                answer = f"{peer.timed(parts[1]):.3f}"
            elif cmd in ("mm", "onednn"):
                m, k, n, reps = (int(p) for p in parts[1:5])
                answer = f"{time_mm(m, k, n, reps, onednn=cmd == 'onednn'):.3f}"
            elif cmd == "pooled":
                peer.pooled(parts[1])
                answer = "ok"
            else:
                answer = f"error unknown command {cmd!r}"
        except Exception as e:  # the C# side reports the error text
            answer = f"error {type(e).__name__}: {e}".replace("\n", " ")
        print(answer, flush=True)


def profile(peer, variant, steps):
    peer.step(variant)
    with torch.autograd.profiler.profile() as prof:
        for _ in range(steps):
            peer.step(variant)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / steps / 1000
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, variant {variant}, {steps} steps, "
          f"self CPU total {total:.1f} ms/step")
    print(table)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights")
    p.add_argument("--batch")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--profile", choices=("lora", "full", "forward"))
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    peer = Peer(args)
    if args.serve:
        print("ready", flush=True)
        serve(peer, args.threads)
    elif args.profile:
        profile(peer, args.profile, args.steps)
    else:
        print(json.dumps(info(args.threads)))
        for variant in ("lora", "full", "forward"):
            peer.step(variant)
            times = [peer.timed(variant) for _ in range(args.steps)]
            print(f"{variant}: median {statistics.median(times):.1f} ms over {args.steps} ({', '.join(f'{t:.0f}' for t in times)})")


if __name__ == "__main__":
    main()
