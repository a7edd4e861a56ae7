using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Foundation": lora.Linear(4096, 4096, r=16) against a frozen plain Linear at batch×seq 8×512.
/// Training step = forward + backward (activation gradients, plus A/B gradients for LoRA); eval = forward, LoRA merged.
/// </summary>
internal static class LayerSuite
{
    public static void Run(BenchReport report, bool quick)
    {
        const int features = 4096;
        int batch = 8, seq = quick ? 128 : 512, reps = quick ? 3 : 7;
        manual_seed(0);
        using var plain = nn.Linear(features, features);
        foreach (var p in plain.parameters()) p.requires_grad = false;
        using var lin = lora.Linear(features, features, r: 16, lora_alpha: 32);
        lora.mark_only_lora_as_trainable(lin);
        using (no_grad())
        {
            // Non-zero B so the LoRA branch does real work (B starts at zero).
            foreach (var (name, p) in lin.named_parameters())
                if (name == "lora_B") p.normal_(0, 0.01);
        }
        using var x = randn(batch, seq, features).requires_grad_(true);

        plain.train();
        lin.train();
        var (loraMs, plainMs) = Measure.Pair(
            () => { using var s = NewDisposeScope(); lin.call(x).sum().backward(); x.grad?.zero_(); },
            () => { using var s = NewDisposeScope(); plain.call(x).sum().backward(); x.grad?.zero_(); },
            reps);
        double ratio = loraMs / plainMs;
        report.Add(new BenchRow("layers", $"train step fwd+bwd, Linear 4096², r=16, {batch}×{seq}", "ms",
            loraMs, plainMs, "lora.Linear", "frozen nn.Linear", "≤ 1.15×", ratio <= 1.15));

        plain.eval();
        lin.eval(); // merges ΔW into W
        using var xe = randn(batch, seq, features);
        var (mergedMs, plainEvalMs) = Measure.Pair(
            () => { using var s = NewDisposeScope(); using var g = no_grad(); lin.call(xe); },
            () => { using var s = NewDisposeScope(); using var g = no_grad(); plain.call(xe); },
            reps);
        ratio = mergedMs / plainEvalMs;
        report.Add(new BenchRow("layers", $"eval forward, merged, {batch}×{seq}", "ms",
            mergedMs, plainEvalMs, "lora.Linear merged", "nn.Linear", "≤ 1.02×", ratio <= 1.02));
    }
}
