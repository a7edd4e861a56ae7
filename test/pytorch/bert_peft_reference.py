#!/usr/bin/env python3
"""An independent PyTorch reference of Hugging Face's BertForSequenceClassification + PEFT LoRA, written from the
papers and Hugging Face's documented semantics (no transformers/peft/safetensors packages: PyPI is not reachable).

  score  BASE_DIR ADAPTER_DIR INPUTS OUT [float64|float32]
                                           Scores INPUTS (input_ids, attention_mask, token_type_ids) with the base
                                           (config.json + model.safetensors) and the PEFT adapter folder
                                           (adapter_config.json, adapter_model.safetensors, head_config.json);
                                           writes {"scores"} to OUT (safetensors).
  train  BASE_DIR ADAPTER_DIR INPUTS OUT [float32]
                                           Trains a LoRA adapter (query/value, r=4, alpha=8) and a head for a few AdamW
                                           steps on INPUTS (+ labels, task in its metadata), saves it as a PEFT folder
                                           with Hugging Face's head, and writes its own scores on INPUTS to OUT.
Scores: multiclass = softmax probabilities; binary = logit difference z1 - z0 (the logit of P(True));
regression = the value.
"""
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "BF16": torch.bfloat16, "F16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(body[begin:end]), dtype=DTYPES[info["dtype"]]) if end > begin else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out, meta


def write_safetensors(path, tensors, meta=None):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


class Reference:
    """BERT with LoRA on named linear layers, computed in float64 from float32 weights."""

    def __init__(self, base_dir, adapter_dir=None, dtype=torch.float64):
        with open(f"{base_dir}/config.json") as f:
            self.config = json.load(f)
        weights, _ = read_safetensors(f"{base_dir}/model.safetensors")
        self.w = {k.removeprefix("bert."): v.to(dtype) for k, v in weights.items()}
        self.dtype = dtype
        self.lora = {}          # module path (without "bert.") -> (A, B, scaling)
        self.head = None
        self.head_config = {"problem_type": "single_label_classification", "pooling": "cls_pooler"}
        if adapter_dir:
            self.load_adapter(adapter_dir)

    def load_adapter(self, adapter_dir):
        with open(f"{adapter_dir}/adapter_config.json") as f:
            config = json.load(f)
        assert config.get("peft_type", "LORA") == "LORA", config
        tensors, _ = read_safetensors(f"{adapter_dir}/adapter_model.safetensors")
        try:
            with open(f"{adapter_dir}/head_config.json") as f:
                self.head_config = json.load(f)
        except FileNotFoundError:
            pass
        prefix = "base_model.model."
        for key, value in tensors.items():
            path = key.removeprefix(prefix)
            if ".lora_A." in path:
                module = path.split(".lora_A.")[0]
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                r = value.shape[0]
                short = module.split(".")[-1]
                alpha = config.get("alpha_pattern", {}).get(module.removeprefix("bert."), config.get("lora_alpha", 8))
                r = config.get("rank_pattern", {}).get(module.removeprefix("bert."), r)
                scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
                self.lora[module.removeprefix("bert.")] = (value.to(self.dtype), b.to(self.dtype), scaling)
            elif ".lora_B." in path:
                continue
            elif path in ("classifier.weight", "classifier.bias"):
                continue
            else:
                raise SystemExit(f"unsupported adapter tensor {key}")
        self.head = (tensors[prefix + "classifier.weight"].to(self.dtype), tensors[prefix + "classifier.bias"].to(self.dtype))

    def linear(self, x, name):
        y = x @ self.w[name + ".weight"].T + self.w[name + ".bias"]
        if name in self.lora:
            a, b, s = self.lora[name]
            y = y + (x @ a.T @ b.T) * s
        return y

    def layer_norm(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.w[name + ".weight"], self.w[name + ".bias"], self.config.get("layer_norm_eps", 1e-12))

    def encode(self, ids, mask, types):
        c = self.config
        heads = c["num_attention_heads"]
        size = c["hidden_size"] // heads
        positions = torch.arange(ids.shape[1])
        h = self.w["embeddings.word_embeddings.weight"][ids] + self.w["embeddings.position_embeddings.weight"][positions] + self.w["embeddings.token_type_embeddings.weight"][types]
        h = self.layer_norm(h, "embeddings.LayerNorm")
        additive = (1.0 - mask[:, None, None, :].to(self.dtype)) * torch.finfo(self.dtype).min
        act = c.get("hidden_act", "gelu")
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            split = lambda t: t.view(t.shape[0], t.shape[1], heads, size).transpose(1, 2)
            q, k, v = (split(self.linear(h, p + "attention.self." + n)) for n in ("query", "key", "value"))
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(size) + additive, dim=-1)
            context = (probs @ v).transpose(1, 2).reshape(h.shape)
            h = self.layer_norm(self.linear(context, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
            inner = self.linear(h, p + "intermediate.dense")
            inner = F.gelu(inner) if act == "gelu" else F.gelu(inner, approximate="tanh") if act.startswith("gelu") else F.relu(inner)
            h = self.layer_norm(self.linear(inner, p + "output.dense") + h, p + "output.LayerNorm")
        return h

    def pool(self, h, mask):
        pooling = self.head_config.get("pooling", "cls_pooler")
        if pooling == "mean":
            m = mask[..., None].to(self.dtype)
            return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        first = h[:, 0]
        return torch.tanh(self.linear(first, "pooler.dense")) if pooling == "cls_pooler" else first

    def logits(self, ids, mask, types, head=None):
        weight, bias = head or self.head
        return self.pool(self.encode(ids, mask, types), mask) @ weight.T + bias

    def scores(self, logits):
        problem = self.head_config.get("problem_type")
        if problem == "regression":
            return logits[:, 0]
        if logits.shape[1] == 2 and self.head_config.get("num_labels", 2) == 2 and "True" in self.head_config.get("label2id", {"True": 1}):
            return logits[:, 1] - logits[:, 0]
        return torch.softmax(logits, dim=-1)


def score(base_dir, adapter_dir, inputs_path, out_path, precision="float64"):
    inputs, _ = read_safetensors(inputs_path)
    model = Reference(base_dir, adapter_dir, dtype=torch.float64 if precision == "float64" else torch.float32)
    with torch.no_grad():
        scores = model.scores(model.logits(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]))
    write_safetensors(out_path, {"scores": scores.to(torch.float32)})


def train(base_dir, adapter_dir, inputs_path, out_path, precision="float32"):
    import os
    inputs, meta = read_safetensors(inputs_path)
    task = meta["task"]
    num_labels = int(meta["num_labels"])
    torch.manual_seed(int(meta.get("seed", "0")))
    model = Reference(base_dir, dtype=torch.float32)
    hidden = model.config["hidden_size"]
    r, alpha = 4, 8
    params = []
    for i in range(model.config["num_hidden_layers"]):
        for n in ("query", "value"):
            name = f"encoder.layer.{i}.attention.self.{n}"
            a = (torch.rand(r, hidden) * 2 - 1) / math.sqrt(hidden)
            b = torch.randn(hidden, r) * 0.02        # non-zero, so the adapter matters from the first step
            a.requires_grad_(); b.requires_grad_()
            model.lora[name] = (a, b, alpha / r)
            params += [a, b]
    outputs = num_labels
    weight = (torch.randn(outputs, hidden) * 0.02).requires_grad_()
    bias = torch.zeros(outputs).requires_grad_()
    params += [weight, bias]
    pooling = meta.get("pooling", "cls_pooler")
    problem = "regression" if task == "regression" else "single_label_classification"
    model.head_config = {"problem_type": problem, "pooling": pooling, "num_labels": num_labels}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    ids, mask, types, labels = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], inputs["labels"]
    for step in range(int(meta.get("steps", "10"))):
        logits = model.logits(ids, mask, types, (weight, bias))
        loss = F.mse_loss(logits[:, 0], labels.float()) if task == "regression" else F.cross_entropy(logits, labels.long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    os.makedirs(adapter_dir, exist_ok=True)
    tensors = {"base_model.model.classifier.weight": weight, "base_model.model.classifier.bias": bias}
    for name, (a, b, _) in model.lora.items():
        tensors[f"base_model.model.bert.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.bert.{name}.lora_B.weight"] = b
    write_safetensors(f"{adapter_dir}/adapter_model.safetensors", tensors, {"format": "pt"})
    with open(f"{adapter_dir}/adapter_config.json", "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
                   "target_modules": ["query", "value"], "modules_to_save": ["classifier"], "bias": "none"}, f, indent=2)
    with torch.no_grad():
        model.head_config["label2id"] = {"False": 0, "True": 1} if task == "binary" else {}
        scores = model.scores(model.logits(ids, mask, types, (weight, bias)))
    write_safetensors(out_path, {"scores": scores.to(torch.float32)})
    print(f"trained {task}: final loss {loss.item():.4f}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"score": score, "train": train}[command](*args)
