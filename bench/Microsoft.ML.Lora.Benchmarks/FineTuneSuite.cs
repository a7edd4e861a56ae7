using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue "Benchmarks" §3, §5, §6: LoraTransformer.Transform rows/s against ONNX Runtime on the same sentences, the merged
/// encoder against the bare base and the unmerged one, the model file against the base weights, Model.Load to first
/// prediction, and process memory over many training steps.
/// </summary>
internal static class FineTuneSuite
{
    private sealed class Row
    {
        [LoadColumn(0)] public string Text { get; set; } = "";
        [LoadColumn(1)] public bool Label { get; set; }
    }

    private sealed class Prediction
    {
        public float Score { get; set; }
    }

    public static void Run(BenchReport report, string repoRoot, int threads, bool quick)
    {
        var ml = new MLContext(seed: 1);
        string tsv = Path.Combine(repoRoot, "samples", "SentimentLora", "data", "sentiment.tsv");
        var all = ml.Data.CreateEnumerable<Row>(
            ml.Data.LoadFromTextFile<Row>(tsv, separatorChar: '\t', hasHeader: true, allowQuoting: false), reuseRowObject: false).ToList();

        // A short fine-tune: the point here is inference and file costs, not accuracy (the sample measures that).
        var trainRows = all.Take(quick ? 128 : 512).ToList();
        var options = new LoraFineTuningOptions { MaxEpochs = 1, TargetModules = ["query", "value"] };
        long fitStart = Stopwatch.GetTimestamp();
        using var model = ml.Transforms.LoraFineTune(options).Fit(ml.Data.LoadFromEnumerable(trainRows));
        report.Note(FormattableString.Invariant(
            $"fine-tune of {trainRows.Count} rows, 1 epoch, LoRA q,v: {Stopwatch.GetElapsedTime(fitStart).TotalSeconds:F1} s"));

        int count = quick ? 1000 : 10_000;
        var sentences = Enumerable.Range(0, count).Select(i => all[i % all.Count]).ToList();
        var input = ml.Data.LoadFromEnumerable(sentences);

        // ONNX Runtime on the same token ids, batched like the transformer, tokenisation included on both sides.
        using var loaded = PretrainedModel.MiniLmL6V2.Load();
        using var sessionOptions = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1 };
        using var session = new InferenceSession(EncoderSuite.MiniLmOnnxBytes(), sessionOptions);
        var texts = sentences.Select(s => s.Text).ToList();

        int seen = 0;
        var (loraMs, ortMs) = Measure.Pair(
            () => seen = ml.Data.CreateEnumerable<Prediction>(model.Transform(input), reuseRowObject: true).Count(),
            () => seen = RunOnnx(session, loaded.Tokenizer, texts, options.InferenceBatchSize, options.MaxSequenceLength),
            repetitions: quick ? 1 : 3, warmup: 0);
        if (seen != count) throw new InvalidOperationException($"Expected {count} predictions, got {seen}.");
        double loraRps = count / (loraMs / 1000), ortRps = count / (ortMs / 1000);
        report.Add(new BenchRow("inference", $"rows/s over {count:N0} sentences (tokenisation included)", "rows/s", loraRps, ortRps,
            "LoraTransformer.Transform (unmerged, shared base)", "ONNX Runtime encoder", "≥ 0.9×", loraRps / ortRps >= 0.9));

        MergedVsBase(report, quick);
        ModelFile(report, ml, model, input);
    }

    private static int RunOnnx(InferenceSession session, BertTextTokenizer tokenizer, List<string> texts, int batchSize, int maxLength)
    {
        int rows = 0;
        for (int start = 0; start < texts.Count; start += batchSize)
        {
            var batch = tokenizer.Encode(texts.GetRange(start, Math.Min(batchSize, texts.Count - start)), null, maxLength);
            int[] shape = { batch.BatchSize, batch.SequenceLength };
            var inputs = session.InputMetadata.Keys.Select(name => NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(
                name.Contains("mask", StringComparison.Ordinal) ? batch.AttentionMask
                : name.Contains("type", StringComparison.Ordinal) ? batch.TokenTypeIds : batch.InputIds, shape))).ToList();
            using var result = session.Run(inputs);
            rows += batch.BatchSize;
        }
        return rows;
    }

    /// <summary>Encoder forward: merged LoRA vs bare base (no extra latency expected), and the price of not merging.</summary>
    private static void MergedVsBase(BenchReport report, bool quick)
    {
        int reps = quick ? 3 : 7;
        using var data = TrainingSuite.Batch(32, 64);
        using var lora = TrainingSuite.Build(TrainingSuite.Variant.LoraQv);
        using var bare = TrainingSuite.Build(TrainingSuite.Variant.Full);
        lora.Model.eval();
        bare.Model.eval();
        Action loraForward = () => { using var s = NewDisposeScope(); using var g = no_grad(); lora.Model.call(data.Ids, data.Mask, data.Types); };
        Action bareForward = () => { using var s = NewDisposeScope(); using var g = no_grad(); bare.Model.call(data.Ids, data.Mask, data.Types); };
        var (mergedMs, bareMs) = Measure.Pair(loraForward, bareForward, reps);
        report.Add(new BenchRow("inference", "MiniLM forward 32×64, LoRA merged vs bare base", "ms", mergedMs, bareMs,
            "LoRA q,v merged", "bare base", "≈ 1.0× (within noise)", Math.Abs(mergedMs / bareMs - 1) <= 0.05));

        foreach (var layer in lora.Model.modules().OfType<ILoraLayer>()) layer.unmerge();
        var (unmergedMs, bare2Ms) = Measure.Pair(loraForward, bareForward, reps);
        report.Add(new BenchRow("inference", "MiniLM forward 32×64, LoRA unmerged vs bare base", "ms", unmergedMs, bare2Ms,
            "LoRA q,v unmerged", "bare base"));
    }

    private static void ModelFile(BenchReport report, MLContext ml, LoraTransformer model, IDataView input)
    {
        string dir = Path.Combine(Path.GetTempPath(), "lora-bench-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string zip = Path.Combine(dir, "model.zip");
            ml.Model.Save(model, input.Schema, zip);
            double zipMiB = new FileInfo(zip).Length / 1048576.0;
            double baseMiB = EncoderSuite.MiniLmOnnxBytes().Length / 1048576.0;
            report.Add(new BenchRow("model file", "ML.NET model zip vs base weights (MiniLM ONNX)", "MiB", zipMiB, baseMiB,
                "LoRA q,v + head zip", "base weights"));

            var fresh = new MLContext(seed: 1);
            long start = Stopwatch.GetTimestamp();
            var loaded = fresh.Model.Load(zip, out _);
            var engine = fresh.Model.CreatePredictionEngine<Row, Prediction>(loaded);
            engine.Predict(new Row { Text = "A wonderful little phone." });
            double firstMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            report.Note(FormattableString.Invariant($"Model.Load → first prediction (PredictionEngine, base model reloaded and fingerprinted): {firstMs:F0} ms"));
            engine.Dispose();
            (loaded as IDisposable)?.Dispose();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
