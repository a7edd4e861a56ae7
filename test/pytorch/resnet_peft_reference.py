#!/usr/bin/env python3
"""An independent PyTorch reference of a torchvision-layout ResNet (basic blocks) with a Hugging Face PEFT LoRA adapter on
its convolutions, written from torchvision's and PEFT's documented semantics (no torchvision/peft/safetensors packages).

  score  BASE ADAPTER_DIR INPUTS OUT    BASE: safetensors state dict with torchvision keys (conv1.weight, bn1.*,
                                        layerN.M.conv1.weight, ..., layerN.0.downsample.{0,1}.*); ADAPTER_DIR: PEFT folder
                                        (adapter_config.json + adapter_model.safetensors, fc in modules_to_save);
                                        INPUTS: {"images"} [N, 3, H, W]; writes {"logits"} to OUT.

Architecture (torchvision): stem conv (stride 2, padding k//2) -> BN -> ReLU -> max pool 3x3 stride 2 padding 1; blocks
relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut), conv1 with stride 2 where the block has a downsample; global average
pool; fc. BatchNorm in evaluation mode (stored statistics). PEFT LoRA on a Conv2d (peft.tuners.lora.layer.Conv2d):
y = conv(x, W) + conv(conv(x, A; stride, padding of the base), B; 1x1) * lora_alpha / r (rank_pattern/alpha_pattern
by key suffix; rsLoRA: alpha / sqrt(r)). Computed in float64.
"""
import json
import math
import re
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bert_peft_reference import read_safetensors, write_safetensors  # noqa: E402


def pattern_value(patterns, key, default):
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pattern}", key):
            return value
    return default


class ResNetReference:
    def __init__(self, base_path, adapter_dir):
        weights, _ = read_safetensors(base_path)
        self.w = {k: v.to(torch.float64) for k, v in weights.items()}
        with open(f"{adapter_dir}/adapter_config.json") as f:
            config = json.load(f)
        adapter, _ = read_safetensors(f"{adapter_dir}/adapter_model.safetensors")
        self.lora = {}
        for key, value in adapter.items():
            key = key.removeprefix("base_model.model.")
            m = re.fullmatch(r"(.*)\.lora_([AB])\.weight", key)
            if m:
                self.lora.setdefault(m.group(1), {})[m.group(2)] = value.to(torch.float64)
            else:
                self.w[key] = value.to(torch.float64)   # modules_to_save (the head)
        self.scaling = {}
        for path, factors in self.lora.items():
            r = pattern_value(config.get("rank_pattern") or {}, path, config["r"])
            alpha = pattern_value(config.get("alpha_pattern") or {}, path, config["lora_alpha"])
            assert factors["A"].shape[0] == r, (path, factors["A"].shape, r)
            self.scaling[path] = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r

    def conv(self, x, path, stride):
        weight = self.w[f"{path}.weight"]
        padding = weight.shape[-1] // 2
        y = F.conv2d(x, weight, self.w.get(f"{path}.bias"), stride=stride, padding=padding)
        if path in self.lora:
            down = F.conv2d(x, self.lora[path]["A"], stride=stride, padding=padding)
            y = y + F.conv2d(down, self.lora[path]["B"]) * self.scaling[path]
        return y

    def bn(self, x, path):
        w = self.w
        return F.batch_norm(x, w[f"{path}.running_mean"], w[f"{path}.running_var"], w[f"{path}.weight"], w[f"{path}.bias"],
                            training=False, eps=1e-5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x, "conv1", 2), "bn1"))
        x = F.max_pool2d(x, 3, 2, 1)
        stage = 1
        while f"layer{stage}.0.conv1.weight" in self.w:
            block = 0
            while f"layer{stage}.{block}.conv1.weight" in self.w:
                p = f"layer{stage}.{block}"
                has_shortcut = f"{p}.downsample.0.weight" in self.w
                stride = 2 if has_shortcut and stage > 1 else 1
                y = F.relu(self.bn(self.conv(x, f"{p}.conv1", stride), f"{p}.bn1"))
                y = self.bn(self.conv(y, f"{p}.conv2", 1), f"{p}.bn2")
                shortcut = self.bn(self.conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1") if has_shortcut else x
                x = F.relu(y + shortcut)
                block += 1
            stage += 1
        features = x.mean(dim=(2, 3))
        return F.linear(features, self.w["fc.weight"], self.w["fc.bias"])


def main():
    command, base, adapter_dir, inputs, out = sys.argv[1:6]
    assert command == "score", command
    images, _ = read_safetensors(inputs)
    with torch.no_grad():
        logits = ResNetReference(base, adapter_dir).forward(images["images"].to(torch.float64))
    write_safetensors(out, {"logits": logits.to(torch.float32)})
    print(f"scored {tuple(images['images'].shape)} -> {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
