using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>Issue "Benchmarks" §6: process RSS over many LoRA training steps must stay flat (no native leak).</summary>
internal static class MemorySuite
{
    public static void Run(BenchReport report, bool quick)
    {
        int steps = quick ? 200 : 2000, every = steps / 20;
        using var data = TrainingSuite.Batch(8, 32);
        using var model = TrainingSuite.Build(TrainingSuite.Variant.LoraQv);
        Action step = EncoderSuite.Step(model.Model, data.Ids, data.Mask, data.Types, data.Labels);
        var xs = new List<double>();
        var rss = new List<double>();
        for (int i = 1; i <= steps; i++)
        {
            step();
            if (i % every == 0)
            {
                GC.Collect();
                xs.Add(i);
                rss.Add(Measure.RssMiB());
            }
        }
        // Compare the second half's last sample with the first sample after warm-up (allocator pools fill early).
        double warm = rss[1], last = rss[^1];
        report.Add(new BenchRow("memory", $"process RSS after {steps} LoRA steps (8×32) vs after {(int)xs[1]}", "MiB", last, warm,
            "end", "after warm-up", "≤ 1.05× (flat)", last / warm <= 1.05));
        Plots.Lines("Process RSS during LoRA training (MiniLM, 8×32)", "step", "RSS (MiB)",
            new[] { ("RSS", xs.ToArray(), rss.ToArray()) }, Path.Combine(report.ResultsDir, "rss.png"));
    }
}
