using Microsoft.ML;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;

namespace ImageLora;

/// <summary>
/// The sample's core, shared by <c>Program.cs</c> and the test (test/Microsoft.ML.Lora.Tests/ImageSampleTests.cs): loads the
/// data, runs (a), (b) and (c) one after the other, and writes the charts.
/// </summary>
internal static class SampleRun
{
    public static SampleReport Execute(RunSettings settings, Action<string> log)
    {
        if (settings.Threads > 0)
        {
            torch.set_num_threads(settings.Threads);
        }

        Directory.CreateDirectory(settings.OutputDirectory);
        var data = SampleData.Load(settings);
        log($"ImageLora: Fashion-MNIST, {data.Train.Count} training, {data.Validation.Count} validation (curves only), {data.Test.Count} test images; " +
            $"(b)/(c) at {settings.Size}×{settings.Size}; torch threads {torch.get_num_threads()}.");

        var results = new List<RunResult>();
        if (settings.RunMlNetRecipe)
        {
            results.Add(MlNetRecipe.Run(new MLContext(seed: settings.Seed), data, settings.OutputDirectory, log));
            Report(results[^1]);
        }

        results.Add(MlNetLoraRun.Run(new MLContext(seed: settings.Seed), settings, data, settings.OutputDirectory, log));
        Report(results[^1]);
        using var normalization = ImageNormalization.FromOnnx(settings.PreprocessPath);
        results.Add(TorchSharpRuns.HeadOnly(settings, data, normalization, settings.OutputDirectory, log));
        Report(results[^1]);

        string confusionPath = Path.Combine(settings.OutputDirectory, "ImageLora.confusion-matrices.png");
        Charts.SaveConfusionMatrices(confusionPath, results, data.Test.Labels);
        string curvePath = Path.Combine(settings.OutputDirectory, "ImageLora.epochs.png");
        Charts.SaveEpochCurves(curvePath, results, data.Test.Labels);
        return new SampleReport(data, results, confusionPath, curvePath);

        void Report(RunResult r) => log(
            $"{r.Name}: accuracy {Metrics.Accuracy(data.Test.Labels, r.Predicted):F4}, training {r.TrainingTime.TotalSeconds:F1} s, test {r.PredictTime.TotalSeconds:F1} s");
    }
}

/// <summary>What a run produced: the data it used, one result per method, and the two charts.</summary>
internal sealed record SampleReport(SampleData Data, IReadOnlyList<RunResult> Results, string ConfusionMatrixPath, string EpochCurvePath)
{
    public double Accuracy(int method) => Metrics.Accuracy(Data.Test.Labels, Results[method].Predicted);

    public double MacroF1(int method) => Metrics.MacroF1(Data.Test.Labels, Results[method].Predicted, FashionMnist.ClassNames.Length);
}
