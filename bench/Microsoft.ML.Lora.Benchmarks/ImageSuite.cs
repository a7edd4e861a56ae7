using Microsoft.ML.Lora.Models.Vision;
using Microsoft.ML.OnnxRuntime;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue 14 (images): the ML.NET ResNet-18 imported into TorchSharp. Forward throughput at 224 against ONNX Runtime running
/// the same graph (batch fixed at 1 by the export), forward at 112 (global pooling) against 224, and a training step at 112
/// (fwd + bwd + AdamW) with LoRA r=8 on every 3×3/7×7 convolution + head against full fine-tuning of all convolutions +
/// head (BatchNorm frozen in both).
/// </summary>
internal static class ImageSuite
{
    public static void Run(BenchReport report, bool quick)
    {
        string modelPath = DnnImageModels.ResNet18Path();
        if (!File.Exists(modelPath))
        {
            report.Note($"images: skipped, {modelPath} not found (restore the Microsoft.ML.DnnImageFeaturizer.ResNet18 package).");
            return;
        }

        int reps = quick ? 3 : 7;
        int batch = 8;
        manual_seed(0);
        using var model = ResNet.FromOnnx(modelPath);
        using var x224 = randn(batch, 3, 224, 224).mul_(50);
        using var x112 = randn(batch, 3, 112, 112).mul_(50);

        // 1. Forward at 224: TorchSharp batch 8 vs ONNX Runtime 8 × batch 1.
        using var session = new InferenceSession(modelPath);
        float[][] rows = Enumerable.Range(0, batch).Select(i => x224[i].contiguous().data<float>().ToArray()).ToArray();
        using var runOptions = new RunOptions();
        var (torchMs, ortMs) = Measure.Pair(
            () => { using var s = NewDisposeScope(); using var g = no_grad(); model.forward(x224); },
            () =>
            {
                foreach (var row in rows)
                {
                    using var v = OrtValue.CreateTensorValueFromMemory(row, [1, 3, 224, 224]);
                    using var o = session.Run(runOptions, new Dictionary<string, OrtValue> { [session.InputNames[0]] = v }, session.OutputNames);
                }
            },
            reps);
        report.Add(new BenchRow("images", $"ResNet-18 forward 224×224, images/s (TorchSharp batch {batch}; ORT batch 1, fixed by the export)", "images/s",
            batch * 1000 / torchMs, batch * 1000 / ortMs, "TorchSharp", "ONNX Runtime", "≥ 0.9×", torchMs <= ortMs / 0.9));

        // 2. Forward at 112 (global pool) vs 224, both TorchSharp.
        var (smallMs, largeMs) = Measure.Pair(
            () => { using var s = NewDisposeScope(); using var g = no_grad(); model.forward(x112); },
            () => { using var s = NewDisposeScope(); using var g = no_grad(); model.forward(x224); },
            reps);
        report.Add(new BenchRow("images", $"ResNet-18 forward images/s, batch {batch}: 112×112 vs 224×224", "images/s",
            batch * 1000 / smallMs, batch * 1000 / largeMs, "112×112", "224×224", Note: "4× fewer pixels: ideal ratio 4"));

        // 3. Training step at 112: LoRA on the convolutions + head vs full fine-tuning.
        int trainBatch = 16;
        using var images = randn(trainBatch, 3, 112, 112).mul_(50);
        using var labels = randint(0, 10, [trainBatch], dtype: ScalarType.Int64);
        manual_seed(1);
        using var loraModel = ResNet.FromOnnx(modelPath, numClasses: 10);
        lora.inject_adapter_in_model(new LoraConfig { r = 8, lora_alpha = 16, target_modules = ["conv1", "conv2"], modules_to_save = ["fc"] }, loraModel);
        manual_seed(1);
        using var fullModel = ResNet.FromOnnx(modelPath, numClasses: 10);
        foreach (var (name, p) in fullModel.named_parameters())
        {
            p.requires_grad = !name.Contains(".bn", StringComparison.Ordinal) && !name.StartsWith("bn", StringComparison.Ordinal)
                && !name.Contains("downsample.1", StringComparison.Ordinal);
        }

        loraModel.train();
        fullModel.train();
        using var loraOptimizer = optim.AdamW(loraModel.parameters().Where(p => p.requires_grad), lr: 1e-3);
        using var fullOptimizer = optim.AdamW(fullModel.parameters().Where(p => p.requires_grad), lr: 1e-4);
        Action Step(ResNet m, optim.Optimizer o) => () =>
        {
            using var s = NewDisposeScope();
            o.zero_grad();
            nn.functional.cross_entropy(m.forward(images), labels).backward();
            o.step();
        };
        var (loraStepMs, fullStepMs) = Measure.Pair(Step(loraModel, loraOptimizer), Step(fullModel, fullOptimizer), reps);
        long loraTrainable = loraModel.parameters().Where(p => p.requires_grad).Sum(p => p.numel());
        long fullTrainable = fullModel.parameters().Where(p => p.requires_grad).Sum(p => p.numel());
        report.Add(new BenchRow("images", $"ResNet-18 train step 112×112, batch {trainBatch} (fwd+bwd+AdamW, BN frozen)", "ms",
            loraStepMs, fullStepMs, $"LoRA r=8 convs + fc ({loraTrainable:N0} trainable)", $"full fine-tuning convs + fc ({fullTrainable:N0})",
            Note: "backward still runs through every layer; LoRA saves the kernel gradients and the optimizer update"));
    }
}
