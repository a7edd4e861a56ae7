using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Performance, round 2" §5: the memory–time curve of <see cref="Recomputation"/> (None, Selective, Full) for
/// the MiniLM LoRA r=8 q,v training step at batch 32 × 64 and 256 tokens (batch 8 there:
/// activation memory and the attention's share of the step grow with the length, not the batch): step time against None (side by side,
/// one model whose mode is switched between repetitions) and peak memory above the weights (a fresh child process per
/// mode and length, as <see cref="TrainingSuite"/> measures it).
/// </summary>
internal static class RecomputeSuite
{
    /// <summary>Batch × length of each measured shape (the long one at batch 8 keeps a run short on a slow machine).</summary>
    private static readonly (int Batch, int Seq)[] Shapes = [(32, 64), (8, 256)];

    public static void Run(BenchReport report, int threads, bool quick)
    {
        foreach (var (batch, seq) in Shapes)
        {
            int reps = quick ? 1 : seq > 64 ? 2 : 3;
            using var data = TrainingSuite.Batch(batch, seq);
            using var variants = TrainingSuite.Build(TrainingSuite.Variant.LoraQv);
            var model = variants.Model;
            Action step = EncoderSuite.Step(model, data.Ids, data.Mask, data.Types, data.Labels);
            Action In(Recomputation mode) => () =>
            {
                model.Bert.Recomputation = mode;
                step();
            };

            var (selectiveMs, none1Ms) = Measure.Pair(In(Recomputation.Selective), In(Recomputation.None), reps);
            report.Add(new BenchRow("recompute", $"step time {batch}×{seq}", "ms", selectiveMs, none1Ms,
                "LoRA r=8 q,v, selective recomputation", "LoRA r=8 q,v, no recomputation", "≤ 1.3×", selectiveMs / none1Ms <= 1.3));
            var (fullMs, none2Ms) = Measure.Pair(In(Recomputation.Full), In(Recomputation.None), reps);
            report.Add(new BenchRow("recompute", $"step time {batch}×{seq}", "ms", fullMs, none2Ms,
                "LoRA r=8 q,v, full checkpointing", "LoRA r=8 q,v, no recomputation"));

            double nonePeak = ProbeInChild(Recomputation.None, batch, seq, threads);
            double selectivePeak = ProbeInChild(Recomputation.Selective, batch, seq, threads);
            double fullPeak = ProbeInChild(Recomputation.Full, batch, seq, threads);
            report.Add(new BenchRow("recompute", $"peak memory above model weights {batch}×{seq}", "MiB", selectivePeak, nonePeak,
                "LoRA r=8 q,v, selective recomputation", "LoRA r=8 q,v, no recomputation", "≤ 0.6×", selectivePeak / nonePeak <= 0.6));
            report.Add(new BenchRow("recompute", $"peak memory above model weights {batch}×{seq}", "MiB", fullPeak, nonePeak,
                "LoRA r=8 q,v, full checkpointing", "LoRA r=8 q,v, no recomputation"));

            // With dropout on the LoRA branches (the ML.NET estimator's default, 0.1), which selective recomputation
            // keeps as byte masks and recomputes.
            double noneDropoutPeak = ProbeInChild(Recomputation.None, batch, seq, threads, EstimatorLoraDropout);
            double selectiveDropoutPeak = ProbeInChild(Recomputation.Selective, batch, seq, threads, EstimatorLoraDropout);
            report.Add(new BenchRow("recompute", $"peak memory above model weights {batch}×{seq}, LoRA dropout 0.1", "MiB", selectiveDropoutPeak, noneDropoutPeak,
                "LoRA r=8 q,v, dropout 0.1, selective recomputation", "LoRA r=8 q,v, dropout 0.1, no recomputation", "≤ 0.6×", selectiveDropoutPeak / noneDropoutPeak <= 0.6));

            // What selective recomputation can save at most: the attention core keeps the softmax output, the dropout
            // scale and the dropout output, three float32 [B, heads, T, T] tensors per layer (libtorch's math attention,
            // which runs whenever dropout is on).
            BertConfig config = model.Bert.Config;
            double scoresMiB = 3.0 * batch * config.NumAttentionHeads * seq * seq * sizeof(float) * config.NumHiddenLayers / (1 << 20);
            report.Note(FormattableString.Invariant(
                $"recompute {batch}×{seq}: the attention core's [B, heads, T, T] activations, 3 float32 tensors × {config.NumHiddenLayers} layers = {scoresMiB:F0} MiB; none {nonePeak:F0} MiB, selective {selectivePeak:F0} MiB, full {fullPeak:F0} MiB; step none {none1Ms:F0} ms, selective {selectiveMs:F0} ms, full {fullMs:F0} ms"));
        }
    }

    /// <summary>Dropout of the LoRA branches in the ML.NET estimator's default options.</summary>
    private const double EstimatorLoraDropout = 0.1;

    /// <summary>Entry point of the child process: prints the peak RSS above the loaded model over 2 steps (the first allocates everything a step needs).</summary>
    public static void Probe(string mode, int batch, int seq, double loraDropout)
    {
        var recomputation = Enum.Parse<Recomputation>(mode);
        using var data = TrainingSuite.Batch(batch, seq);
        using var variants = TrainingSuite.Build(TrainingSuite.Variant.LoraQv, loraDropout);
        variants.Model.Bert.Recomputation = recomputation;
        Action step = EncoderSuite.Step(variants.Model, data.Ids, data.Mask, data.Types, data.Labels);
        Measure.ResetPeakRss();
        double before = Measure.RssMiB();
        for (int i = 0; i < 2; i++) step();
        Console.WriteLine(FormattableString.Invariant($"PEAK_ABOVE_MIB {Measure.PeakRssMiB() - before:F1}"));
    }

    private static double ProbeInChild(Recomputation mode, int batch, int seq, int threads, double loraDropout = 0)
    {
        string self = Environment.ProcessPath!;
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(RecomputeSuite).Assembly.Location);
        psi.ArgumentList.Add("--threads");
        psi.ArgumentList.Add(threads.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add("--probe-recompute");
        psi.ArgumentList.Add(mode.ToString());
        psi.ArgumentList.Add(batch.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add(seq.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add(loraDropout.ToString(CultureInfo.InvariantCulture));
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string? line = output.Split('\n').FirstOrDefault(l => l.StartsWith("PEAK_ABOVE_MIB", StringComparison.Ordinal));
        if (p.ExitCode != 0 || line is null) throw new InvalidOperationException($"Memory probe for {mode} at {batch}×{seq} (LoRA dropout {loraDropout}) failed (exit {p.ExitCode}): {output}");
        return double.Parse(line.Split(' ')[1], CultureInfo.InvariantCulture);
    }
}
