using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Benchmarks" §1, §2, §4: MiniLM training step time and peak memory for LoRA r=8 (q,v), LoRA on all linear
/// layers and full fine-tuning at batch 32 × seq 64; achieved FLOP rate against the matmul limit; scaling with sequence
/// length and batch size.
/// </summary>
internal static class TrainingSuite
{
    internal enum Variant { LoraQv, LoraAllLinear, Full, LoraQvCheckpointed, FullCheckpointed, LoraQvTopHalf }

    public static void Run(BenchReport report, LimitSuite limit, bool quick)
    {
        int reps = quick ? 2 : 5;
        const int batch = 32, seq = 64;
        using var data = Batch(batch, seq);

        using var qv = Build(Variant.LoraQv);
        using var all = Build(Variant.LoraAllLinear);
        using var full = Build(Variant.Full);
        Action qvStep = EncoderSuite.Step(qv.Model, data.Ids, data.Mask, data.Types, data.Labels);
        Action allStep = EncoderSuite.Step(all.Model, data.Ids, data.Mask, data.Types, data.Labels);
        Action fullStep = EncoderSuite.Step(full.Model, data.Ids, data.Mask, data.Types, data.Labels);

        // The matmul limit is sampled before, between and after the pairs it divides (LimitSuite): a median, with its spread.
        limit.Sample("before training");
        var (qvMs, fullMs) = Measure.Pair(qvStep, fullStep, reps);
        limit.Sample("after the q,v pair");
        report.Add(new BenchRow("training", $"step time {batch}×{seq}", "ms", qvMs, fullMs, "LoRA r=8 q,v", "full fine-tuning",
            "≤ 0.6× (≤ 0.75× in the encoder issue)", qvMs / fullMs <= 0.6));
        var (allMs, full2Ms) = Measure.Pair(allStep, fullStep, reps);
        limit.Sample("after the all-linear pair");
        report.Add(new BenchRow("training", $"step time {batch}×{seq}", "ms", allMs, full2Ms, "LoRA r=8 all-linear", "full fine-tuning"));
        using (var checkpointed = Build(Variant.LoraQvCheckpointed))
        {
            Action checkpointedStep = EncoderSuite.Step(checkpointed.Model, data.Ids, data.Mask, data.Types, data.Labels);
            var (ckMs, full3Ms) = Measure.Pair(checkpointedStep, fullStep, reps);
            report.Add(new BenchRow("training", $"step time {batch}×{seq}", "ms", ckMs, full3Ms, "LoRA r=8 q,v + gradient checkpointing", "full fine-tuning",
                "≤ 0.6×", ckMs / full3Ms <= 0.6));
            var (ck2Ms, qv2Ms) = Measure.Pair(checkpointedStep, qvStep, reps);
            report.Add(new BenchRow("training", $"step time {batch}×{seq}, the price of checkpointing", "ms", ck2Ms, qv2Ms,
                "LoRA r=8 q,v + gradient checkpointing", "LoRA r=8 q,v"));
        }
        using (var topHalf = Build(Variant.LoraQvTopHalf))
        {
            // PEFT's layers_to_transform: with adapters only in layers 3-5, the backward stops at layer 3.
            Action topStep = EncoderSuite.Step(topHalf.Model, data.Ids, data.Mask, data.Types, data.Labels);
            var (topMs, full4Ms) = Measure.Pair(topStep, fullStep, reps);
            report.Add(new BenchRow("training", $"step time {batch}×{seq}", "ms", topMs, full4Ms, "LoRA r=8 q,v, layers 3-5 only", "full fine-tuning",
                "≤ 0.6×", topMs / full4Ms <= 0.6));
        }

        var (limitMin, limitGflops, limitMax) = limit.Spread(LimitSuite.LibTorch, LimitSuite.Square);
        report.Note(FormattableString.Invariant($"training: libtorch 2048³ matmul limit sampled {limit.When.Count} times (start-up, before, between and after the step pairs): min {limitMin:F1} / median {limitGflops:F1} / max {limitMax:F1} GFLOP/s; the FLOP-rate rows divide by the median"));
        BertConfig config = qv.Model.Bert.Config;
        double loraFlops = StepFlops(config, batch, seq, fullFineTuning: false);
        double achieved = loraFlops / (qvMs / 1000) / 1e9;
        report.Add(new BenchRow("training", $"LoRA q,v step FLOP rate ({loraFlops / 1e9:F1} GFLOP/step)", "GFLOP/s", achieved, limitGflops,
            "achieved", "fp32 matmul limit", "≥ 0.5×", achieved / limitGflops >= 0.5));
        double fullFlops = StepFlops(config, batch, seq, fullFineTuning: true);
        double fullAchieved = fullFlops / (fullMs / 1000) / 1e9;
        report.Add(new BenchRow("training", $"full fine-tuning step FLOP rate ({fullFlops / 1e9:F1} GFLOP/step)", "GFLOP/s", fullAchieved, limitGflops,
            "achieved", "fp32 matmul limit"));

        // Measured in a fresh process per variant, so one variant's freed memory cannot hide the other's peak.
        double qvPeak = ProbeMemoryInChild(Variant.LoraQv);
        double fullPeak = ProbeMemoryInChild(Variant.Full);
        report.Add(new BenchRow("training", "peak memory above model weights", "MiB", qvPeak, fullPeak, "LoRA r=8 q,v", "full fine-tuning",
            "≤ 0.5×", qvPeak / fullPeak <= 0.5));
        double checkpointedPeak = ProbeMemoryInChild(Variant.LoraQvCheckpointed);
        report.Add(new BenchRow("training", "peak memory above model weights", "MiB", checkpointedPeak, fullPeak, "LoRA r=8 q,v + gradient checkpointing", "full fine-tuning",
            "≤ 0.5×", checkpointedPeak / fullPeak <= 0.5));
        double fullCheckpointedPeak = ProbeMemoryInChild(Variant.FullCheckpointed);
        report.Add(new BenchRow("training", "peak memory above model weights, both checkpointed", "MiB", checkpointedPeak, fullCheckpointedPeak,
            "LoRA r=8 q,v + gradient checkpointing", "full fine-tuning + gradient checkpointing"));

        if (!quick) Scaling(report, qv.Model);
    }

    private static void Scaling(BenchReport report, BertForSequenceClassification model)
    {
        var rows = new List<(string axis, int batch, int seq, double ms)>();
        foreach (int seq in new[] { 32, 64, 128, 256 }) rows.Add(("seq", 32, seq, StepMs(model, 32, seq)));
        foreach (int batch in new[] { 8, 16, 32, 64 }) rows.Add(("batch", batch, 64, StepMs(model, batch, 64)));
        foreach (var r in rows)
        {
            double tokensPerSecond = r.batch * r.seq / (r.ms / 1000);
            report.Note(FormattableString.Invariant($"scaling ({r.axis}): LoRA q,v step {r.batch}×{r.seq} = {r.ms:F0} ms, {tokensPerSecond:F0} tokens/s"));
        }
        Plots.Scaling(rows, Path.Combine(report.ResultsDir, "scaling.png"));
    }

    private static double StepMs(BertForSequenceClassification model, int batch, int seq)
    {
        using var data = Batch(batch, seq);
        Action step = EncoderSuite.Step(model, data.Ids, data.Mask, data.Types, data.Labels);
        step();
        var times = new List<double> { Measure.Time(step), Measure.Time(step), Measure.Time(step) };
        return Measure.Median(times);
    }

    /// <summary>
    /// FLOPs of one training step: forward (linear layers + attention), activation gradients (the same again), and
    /// weight gradients of the trainable matrices (all linear weights for full fine-tuning; LoRA's are negligible).
    /// </summary>
    internal static double StepFlops(BertConfig c, int batch, int seq, bool fullFineTuning)
    {
        double tokens = (double)batch * seq;
        double h = c.HiddenSize, i = c.IntermediateSize;
        double linear = tokens * c.NumHiddenLayers * (2 * 4 * h * h + 2 * 2 * h * i);
        double attention = tokens * c.NumHiddenLayers * (2 * 2 * seq * h);
        double forward = linear + attention;
        double activationGradients = linear + 2 * attention;
        double weightGradients = fullFineTuning ? linear : 0;
        return forward + activationGradients + weightGradients;
    }

    internal sealed class Variants : IDisposable
    {
        public required LoadedPretrainedModel Loaded { get; init; }
        public required BertForSequenceClassification Model { get; init; }
        public void Dispose()
        {
            Model.Dispose();
            Loaded.Dispose();
        }
    }

    /// <param name="v">What trains.</param>
    /// <param name="loraDropout">Dropout on the LoRA branches' input (LoraConfig's default 0; the ML.NET estimator's is 0.1).</param>
    internal static Variants Build(Variant v, double loraDropout = 0)
    {
        manual_seed(0);
        var loaded = PretrainedModel.MiniLmL6V2.Load();
        var model = new BertForSequenceClassification(loaded.Model, 2);
        model.Bert.GradientCheckpointing = v is Variant.LoraQvCheckpointed or Variant.FullCheckpointed;
        if (v is not (Variant.Full or Variant.FullCheckpointed))
        {
            var config = new LoraConfig { r = 8, lora_alpha = 16, lora_dropout = loraDropout };
            if (v == Variant.LoraQvTopHalf) config.layers_to_transform = new List<int> { 3, 4, 5 };
            if (v is Variant.LoraQv or Variant.LoraQvCheckpointed or Variant.LoraQvTopHalf) config.target_modules = new List<string> { "query", "value" };
            else config.target_modules = new List<string> { LoraConfig.AllLinear };
            lora.inject_adapter_in_model(config, model.Bert);
            lora.mark_only_lora_as_trainable(model);
            foreach (var (name, p) in model.named_parameters())
                if (name.StartsWith("classifier.", StringComparison.Ordinal)) p.requires_grad = true;
        }
        return new Variants { Loaded = loaded, Model = model };
    }

    internal sealed class TrainingBatch : IDisposable
    {
        public required Tensor Ids { get; init; }
        public required Tensor Mask { get; init; }
        public required Tensor Types { get; init; }
        public required Tensor Labels { get; init; }
        public void Dispose()
        {
            Ids.Dispose();
            Mask.Dispose();
            Types.Dispose();
            Labels.Dispose();
        }
    }

    internal static TrainingBatch Batch(int batch, int seq)
    {
        var g = new TorchSharp.torch.Generator(0);
        return new TrainingBatch
        {
            Ids = randint(1000, 30000, new long[] { batch, seq }, dtype: int64, generator: g),
            Mask = ones(batch, seq, dtype: int64),
            Types = zeros(batch, seq, dtype: int64),
            Labels = randint(0, 2, new long[] { batch }, dtype: int64, generator: g),
        };
    }

    /// <summary>Child process of <see cref="MemoryProbe"/>: the peak RSS above the loaded model over 3 steps of variant <paramref name="variant"/>.</summary>
    public static void ProbeMemory(string variant)
    {
        var v = Enum.Parse<Variant>(variant);
        using var data = Batch(32, 64);
        using var model = Build(v);
        MemoryProbe.Report(EncoderSuite.Step(model.Model, data.Ids, data.Mask, data.Types, data.Labels));
    }

    private static double ProbeMemoryInChild(Variant v) => MemoryProbe.InChild(v.ToString());
}
