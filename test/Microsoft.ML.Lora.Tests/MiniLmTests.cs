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

    private sealed class Reporter(Action<LoraTrainingProgress> action) : IProgress<LoraTrainingProgress>
    {
        public void Report(LoraTrainingProgress value) => action(value);
    }
}
