"""Independent PyTorch reference for loralib's layer math, used by the .NET tests (LoralibReferenceTests).

Usage: python3 loralib_reference.py <dir>
<dir> holds cases.json (one object per case: name, kind, hyper-parameters, the .NET side's lora_state_dict key sets)
and tensors.safetensors (per case: weight, bias, lora_A, lora_B, x, grad_out and the .NET results y, y_merged,
grad_A, grad_B, grad_x). For every case this script recomputes, in float64 from the same float32 inputs, what
Microsoft's loralib computes (written here from loralib's published semantics, not imported): the training forward,
the gradients of loss = sum(y * grad_out) with respect to lora_A, lora_B and x, and the forward after merging
(eval()). It prints one line per quantity:
    RESULT <case> <quantity> max_abs=<a> max_rel=<r>      (max_rel = max|dotnet - ref| / max|ref|)
and, per bias mode, whether loralib's lora_state_dict key set equals the .NET one:
    KEYS <case> <mode> OK|MISMATCH loralib=[...] dotnet=[...]
and, for convolutions, whether the .NET lora.loralib_state_dict loads with strict=True into a module built the way
loralib's ConvLoRA is (inner conv's tensors registered twice), and what that module then computes:
    LOAD <case> OK max_rel=<r> | LOAD <case> SKIPPED <why> | LOAD <case> FAILED <error>
Exit code 0 when every line could be computed (the .NET test judges the tolerances), 2 on bad input.
Needs only python3 and torch (no safetensors, no loralib).
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        t = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        tensors[key] = t.reshape(entry["shape"]).clone()
    return tensors


# ---- loralib's math (float64) ------------------------------------------------------------------------------------

def linear_forward(c, w, b, A, B, x, merged):
    s = c["alpha"] / c["r"]
    W = w.t() if c.get("fan_in_fan_out") else w          # loralib keeps the stored layout and transposes with T()
    if merged:
        return F.linear(x, W + (B @ A) * s, b)
    return F.linear(x, W, b) + (x @ A.t() @ B.t()) * s


def embedding_forward(c, w, b, A, B, x, merged):
    s = c["alpha"] / c["r"]
    pad = c.get("padding_idx")
    if merged:
        return F.embedding(x, w + (B @ A).t() * s, pad)
    return F.embedding(x, w, pad) + (F.embedding(x, A.t(), pad) @ B.t()) * s


def merged_linear_forward(c, w, b, A, B, x, merged):
    s = c["alpha"] / c["r"]
    enable = c["enable_lora"]
    k = sum(enable)
    out = w.shape[1] if c.get("fan_in_fan_out") else w.shape[0]
    W = w.t() if c.get("fan_in_fan_out") else w
    ind = torch.zeros(out, dtype=torch.bool).view(len(enable), -1)
    ind[torch.tensor(enable), :] = True
    ind = ind.view(-1)

    def zero_pad(v):
        result = v.new_zeros((*v.shape[:-1], out))
        result = result.view(-1, out)
        result[:, ind] = v.reshape(-1, out // len(enable) * k)
        return result.view((*v.shape[:-1], out))

    if merged:
        delta = F.conv1d(A.unsqueeze(0), B.unsqueeze(-1), groups=k).squeeze(0)     # (out/n·k, in)
        # loralib pads T(delta) along its last axis, which only works for fan_in_fan_out=True layers (GPT-2); padding
        # the output axis of delta is what it means in both layouts.
        return F.linear(x, W + zero_pad(delta.t() * s).t(), b)
    after_a = F.linear(x, A)
    after_b = F.conv1d(after_a.transpose(-2, -1), B.unsqueeze(-1), groups=k).transpose(-2, -1)
    return F.linear(x, W, b) + zero_pad(after_b) * s


def conv(dims):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]


def conv_loralib_forward(c, w, b, A, B, x, merged):
    # loralib's ConvLoRA: conv(x, W + (B @ A).view(W.shape) * scaling); merging adds the same ΔW into W.
    s = c["alpha"] / c["r"]
    f = conv(c["dims"])
    kernel = w + (B @ A).view(w.shape) * s
    return f(x, kernel, b, c["stride"], c["padding"], c["dilation"], c["groups"])


def conv_peft_forward(c, w, b, A, B, x, merged):
    # PEFT's lora.Conv (groups = 1): conv(x, W) + conv1x1(conv(x, A), B) * scaling; merged ΔW = conv(A^T, B)^T.
    s = c["alpha"] / c["r"]
    f = conv(c["dims"])
    assert c["groups"] == 1
    if merged:
        delta = f(A.transpose(0, 1), B).transpose(0, 1) * s
        return f(x, w + delta, b, c["stride"], c["padding"], c["dilation"])
    down = f(x, A, None, c["stride"], c["padding"], c["dilation"])
    return f(x, w, b, c["stride"], c["padding"], c["dilation"]) + f(down, B) * s


FORWARDS = {
    "Linear": linear_forward,
    "Embedding": embedding_forward,
    "MergedLinear": merged_linear_forward,
    "ConvLoralib": conv_loralib_forward,
    "ConvPeft": conv_peft_forward,
}


# loralib's own state-dict keys for a layer of this kind (ConvLoRA registers its inner conv's tensors twice).
def loralib_state_keys(c):
    keys = ["weight"] + (["bias"] if c["has_bias"] else []) + ["lora_A", "lora_B"]
    if c["kind"] == "ConvLoralib":
        keys += ["conv.weight"] + (["conv.bias"] if c["has_bias"] else [])
    return keys


# loralib.utils.lora_state_dict, written from its documented behaviour.
def loralib_lora_state_dict_keys(keys, bias):
    if bias == "none":
        return {k for k in keys if "lora_" in k}
    if bias == "all":
        return {k for k in keys if "lora_" in k or "bias" in k}
    result = set()
    for k in keys:
        if "lora_" in k:
            result.add(k)
            bias_name = k.split("lora_")[0] + "bias"
            if bias_name in keys:
                result.add(bias_name)
    return result


def loralib_conv_module(c):
    """A module laid out as loralib's ConvLoRA: self.conv, its tensors also registered as weight/bias, lora_A/lora_B."""
    k = c["kernel_size"]
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[c["dims"]]
    m = nn.Module()
    m.conv = conv_type(c["in_channels"], c["out_channels"], k, stride=c["stride"], padding=c["padding"],
                       dilation=c["dilation"], groups=c["groups"], bias=c["has_bias"])
    for name, p in m.conv.named_parameters():
        m.register_parameter(name, p)
    r = c["r"]
    m.lora_A = nn.Parameter(m.conv.weight.new_zeros((r * k, c["in_channels"] * k)))
    m.lora_B = nn.Parameter(m.conv.weight.new_zeros((c["out_channels"] // c["groups"] * k, r * k)))
    return m.double()


def check_loralib_load(c, t, x, expected_y):
    name = c["name"]
    prefix = f"{name}.loralib."
    state = {k[len(prefix):]: v.double() for k, v in t.items() if k.startswith(prefix)}
    k = c["kernel_size"]
    if tuple(state["lora_A"].shape) != (c["r"] * k, c["in_channels"] * k):
        print(f"LOAD {name} SKIPPED loralib's [r*k, in*k] layout cannot build this kernel (loralib #115)")
        return
    m = loralib_conv_module(c)
    try:
        m.load_state_dict(state, strict=True)
    except RuntimeError as e:
        print(f"LOAD {name} FAILED {str(e).splitlines()[0]}")
        return
    s = c["alpha"] / c["r"]
    with torch.no_grad():
        kernel = m.conv.weight + (m.lora_B @ m.lora_A).view(m.conv.weight.shape) * s
        y = conv(c["dims"])(x, kernel, m.conv.bias, c["stride"], c["padding"], c["dilation"], c["groups"])
    diff = (y - expected_y).abs().max().item()
    rel = diff / max(expected_y.abs().max().item(), 1e-30)
    print(f"LOAD {name} OK max_rel={rel:.3e}")


def report(case, quantity, actual, expected):
    diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    rel = diff / max(scale, 1e-30)
    print(f"RESULT {case} {quantity} max_abs={diff:.3e} max_rel={rel:.3e}")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    folder = sys.argv[1]
    with open(os.path.join(folder, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    t = read_safetensors(os.path.join(folder, "tensors.safetensors"))
    print(f"torch {torch.__version__}, {len(cases)} cases")
    for c in cases:
        name = c["name"]
        forward = FORWARDS[c["kind"]]
        get = lambda k: t[f"{name}.{k}"]
        w = get("weight").double()
        b = get("bias").double() if c["has_bias"] else None
        A = get("lora_A").double().requires_grad_(True)
        B = get("lora_B").double().requires_grad_(True)
        ids = c["kind"] == "Embedding"
        x = get("x").long() if ids else get("x").double().requires_grad_(True)
        g = get("grad_out").double()

        y = forward(c, w, b, A, B, x, merged=False)
        (y * g).sum().backward()
        report(name, "y", get("y"), y.detach())
        report(name, "grad_A", get("grad_A"), A.grad)
        report(name, "grad_B", get("grad_B"), B.grad)
        if not ids:
            report(name, "grad_x", get("grad_x"), x.grad)
        with torch.no_grad():
            y_merged = forward(c, w, b, A.detach(), B.detach(), x.detach(), merged=True)
        report(name, "y_merged", get("y_merged"), y_merged)

        if c["kind"] == "ConvLoralib":
            check_loralib_load(c, t, x.detach(), get("y").double())  # against the .NET output

        if c["kind"] != "ConvPeft":
            for mode in ("none", "lora_only", "all"):
                loralib_keys = loralib_lora_state_dict_keys(loralib_state_keys(c), mode)
                # The .NET layer writes each tensor once: loralib's duplicated conv.* names are the same tensors.
                comparable = sorted(k for k in loralib_keys if not k.startswith("conv."))
                dotnet = sorted(c["lora_state_dict"][mode])
                status = "OK" if comparable == dotnet else "MISMATCH"
                print(f"KEYS {name} {mode} {status} loralib={sorted(loralib_keys)} dotnet={dotnet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
