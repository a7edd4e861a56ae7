using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>One deliberate test on the real embedded all-MiniLM-L6-v2 (22.7 M parameters) and real sentences.</summary>
[TestClass]
public sealed class MiniLmTests
{
    [TestMethod]
    public void Fit_MiniLm64Sentences_LossFallsAndZipUnderOneMegabyte()
    {
        var ml = new MLContext(seed: 1);
        var rows = File.ReadLines(Path.Combine(AppContext.BaseDirectory, "TestData", "sentiment.tsv")).Skip(1)
            .Select(l => l.Split('\t'))
            .Select((p, i) => (Text: p[0], Label: p[1] == "1", Index: i))
            .Where(r => r.Index % 47 == 0)
            .Take(64)
            .Select(r => new BinaryRow { Text = r.Text, Label = r.Label })
            .ToList();
        Assert.HasCount(64, rows);
        var data = ml.Data.LoadFromEnumerable(rows);
        var epochLosses = new List<double>();
        var options = new LoraFineTuningOptions
        {
            BaseModel = PretrainedModel.MiniLmL6V2,
            TargetModules = ["query", "value"],
            Rank = 8,
            BatchSize = 16,
            MaxEpochs = 8,
            LearningRate = 3e-3,
            MaxSequenceLength = 48,
            ProgressInterval = 1000,
            Progress = new Reporter(p => epochLosses.Add(p.Loss)),
        };
        using var model = ml.Transforms.LoraFineTune(options).Fit(data);

        // One report per epoch (ProgressInterval exceeds the steps): the mean training loss of that epoch. Starting near
        // ln 2 ≈ 0.69, fine-tuning must bring the last epoch's loss clearly below the first's.
        Assert.HasCount(8, epochLosses);
        Assert.IsLessThan(0.8 * epochLosses[0], epochLosses[^1], string.Join(", ", epochLosses));

        // r = 8 on query and value of 6 layers: 6 × 2 × 8 × (384 + 384) = 73,728 LoRA parameters + a 385-parameter head.
        Assert.AreEqual(73_728 + 385, model.TrainableParameterCount);
        string path = Path.Combine(Path.GetTempPath(), $"minilm-{Guid.NewGuid():N}.zip");
        try
        {
            ml.Model.Save(model, data.Schema, path);
            Assert.IsLessThan(1024 * 1024, new FileInfo(path).Length, "only LoRA and head tensors: the 90 MB base is not in the file");
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// The bar for the export, on the real encoder and the sample's held-out split (seeded 80/20, 603 sentences): the
    /// exported ONNX model run by ONNX Runtime (Microsoft.ML.Lora.Onnx) gives Transform's scores within 1e-4 and the same
    /// accuracy. Fine-tuning is kept short (128 sentences, 2 epochs): agreement, not quality, is under test.
    /// </summary>
    [TestMethod]
    public void ExportOnnx_MiniLmSentimentTestSplit_OnnxRuntimeScoresEqualTransformWithSameAccuracy()
    {
        var ml = new MLContext(seed: 42);
        var sentiment = SentimentSplit.Load(ml);
        using var model = sentiment.FitBriefly(ml);
        string path = Path.Combine(Path.GetTempPath(), $"minilm-{Guid.NewGuid():N}.onnx");
        try
        {
            model.ExportOnnx(path);
            using var onnx = ml.Transforms.ScoreLoraOnnx(path);
            var test = sentiment.Test;
            var torchScored = model.Transform(test);
            var onnxScored = onnx.Transform(test);
            var torchScores = torchScored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToArray();
            var onnxScores = onnxScored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToArray();
            Assert.HasCount(603, onnxScores);
            double maxDifference = torchScores.Zip(onnxScores, (t, o) => t.Zip(o, (a, b) => Math.Abs(a - b)).Max()).Max();
            double torchAccuracy = ml.MulticlassClassification.Evaluate(torchScored).MicroAccuracy;
            double onnxAccuracy = ml.MulticlassClassification.Evaluate(onnxScored).MicroAccuracy;
            Console.WriteLine($"MiniLM sentiment test split: max |ΔScore| {maxDifference:E2}, accuracy Transform {torchAccuracy:F4}, ONNX Runtime {onnxAccuracy:F4}, ONNX file {new FileInfo(path).Length:N0} bytes");

            // 6 layers of 384-wide float32 math in two runtimes: differences are rounding noise, orders below the bound.
            Assert.IsLessThan(1e-4, maxDifference);
            Assert.AreEqual(torchAccuracy, onnxAccuracy);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private sealed class Reporter(Action<LoraTrainingProgress> action) : IProgress<LoraTrainingProgress>
    {
        public void Report(LoraTrainingProgress value) => action(value);
    }
}
