using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Data;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue 12 (serving): process RSS and load times for 1, 2, 5 and 10 models fine-tuned on MiniLM (different adapters, one
/// shared base), each count in a fresh child process; the same for 10 models holding private merged copies; and the
/// per-row scoring cost of a model running LoRA unmerged on the shared base against one with a private merged copy.
/// </summary>
internal static class ServingSuite
{
    private static readonly int[] Counts = [1, 2, 5, 10];

    private sealed class Row
    {
        [LoadColumn(0)] public string Text { get; set; } = "";
        [LoadColumn(1)] public bool Label { get; set; }
    }

    private sealed class Prediction
    {
        public float Score { get; set; }
    }

    private sealed record Probe(int Models, bool Merged, double RssBeforeMiB, double RssMiB, double[] LoadMs);

    public static void Run(BenchReport report, string repoRoot, bool quick)
    {
        var ml = new MLContext(seed: 1);
        string tsv = Path.Combine(repoRoot, "samples", "SentimentLora", "data", "sentiment.tsv");
        var all = ml.Data.CreateEnumerable<Row>(
            ml.Data.LoadFromTextFile<Row>(tsv, separatorChar: '\t', hasHeader: true, allowQuoting: false), reuseRowObject: false).ToList();
        string dir = Path.Combine(Path.GetTempPath(), "lora-bench-serving-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            // Ten different adapters (seeds and rows differ): one short epoch each; the point is serving, not accuracy.
            var train = ml.Data.LoadFromEnumerable(all.Take(32));
            long fitStart = Stopwatch.GetTimestamp();
            LoraTransformer? first = null;
            for (int i = 0; i < Counts[^1]; i++)
            {
                var fitContext = new MLContext(seed: i + 1);
                var options = new LoraFineTuningOptions { MaxEpochs = 1, BatchSize = 16, TargetModules = ["query", "value"] };
                var model = fitContext.Transforms.LoraFineTune(options).Fit(ml.Data.LoadFromEnumerable(all.Skip(i * 8).Take(32)));
                ml.Model.Save(model, train.Schema, ZipPath(dir, i));
                if (first is null)
                {
                    first = model; // keeps the base loaded while the others train
                }
                else
                {
                    model.Dispose();
                }
            }

            first!.Dispose();
            report.Note(FormattableString.Invariant(
                $"serving: {Counts[^1]} adapters fine-tuned on MiniLM (32 rows, 1 epoch, LoRA q,v) in {Stopwatch.GetElapsedTime(fitStart).TotalSeconds:F1} s"));

            var probes = Counts.Select(n => ProbeInChild(dir, n, merged: false)).ToList();
            var one = probes[0];
            foreach (var p in probes.Skip(1))
            {
                bool? goal = p.Models == 10 ? p.RssMiB / one.RssMiB <= 1.25 : null;
                report.Add(new BenchRow("serving", $"process RSS, {p.Models} models vs 1 (shared base, unmerged)", "MiB", p.RssMiB, one.RssMiB,
                    $"{p.Models} models", "1 model", p.Models == 10 ? "≤ 1.25×" : null, goal));
            }

            var ten = probes[^1];
            double worstLater = ten.LoadMs.Skip(1).Max();
            report.Add(new BenchRow("serving", "Model.Load → first prediction, slowest of models 2…10 vs the first", "ms", worstLater, ten.LoadMs[0],
                "slowest later load", "first load", "≤ 0.1×", worstLater / ten.LoadMs[0] <= 0.1));
            report.Note("serving: load times in ms (Model.Load + PredictionEngine + first prediction), 10 models in one process: "
                + string.Join(", ", ten.LoadMs.Select(ms => ms.ToString("F0", CultureInfo.InvariantCulture))));
            foreach (var p in probes)
            {
                report.Note(FormattableString.Invariant(
                    $"serving: {p.Models} model(s): RSS {p.RssMiB:F0} MiB (runtime before any load {p.RssBeforeMiB:F0} MiB), load ms [{string.Join(", ", p.LoadMs.Select(ms => ms.ToString("F0", CultureInfo.InvariantCulture)))}]"));
            }

            var merged = ProbeInChild(dir, Counts[^1], merged: true);
            report.Add(new BenchRow("serving", "process RSS, 10 models: private merged copies vs shared unmerged", "MiB", merged.RssMiB, ten.RssMiB,
                "10 merged copies", "10 unmerged on one base"));

            PerRowCost(report, ml, dir, all, quick);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Child process: loads the first <paramref name="count"/> models, one prediction each, prints RSS and load times.</summary>
    public static void ProbeInProcess(string dir, int count, bool merged)
    {
        LoraBaseModels.PrivateMergedCopies = merged;
        using (var warm = ones(8, 8))
        {
            warm.matmul(warm).Dispose(); // libtorch loaded before the clock starts
        }

        GC.Collect();
        double before = Measure.RssMiB();
        var ml = new MLContext(seed: 1);
        var keep = new List<(ITransformer Model, PredictionEngine<Row, Prediction> Engine)>();
        var loadMs = new double[count];
        for (int i = 0; i < count; i++)
        {
            long start = Stopwatch.GetTimestamp();
            var model = ml.Model.Load(ZipPath(dir, i), out _);
            var engine = ml.Model.CreatePredictionEngine<Row, Prediction>(model);
            engine.Predict(new Row { Text = "A wonderful little phone." });
            loadMs[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            keep.Add((model, engine));
        }

        GC.Collect();
        GC.WaitForPendingFinalizers();
        double rss = Measure.RssMiB();
        Console.WriteLine("SERVING " + JsonSerializer.Serialize(new Probe(count, merged, before, rss, loadMs)));
        GC.KeepAlive(keep);
    }

    private static Probe ProbeInChild(string dir, int count, bool merged)
    {
        string self = Environment.ProcessPath!;
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(ServingSuite).Assembly.Location);
        psi.ArgumentList.Add("--probe-serving");
        psi.ArgumentList.Add(dir);
        psi.ArgumentList.Add(count.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add(merged ? "merged" : "unmerged");
        psi.ArgumentList.Add("--threads");
        psi.ArgumentList.Add(get_num_threads().ToString(CultureInfo.InvariantCulture));
        using var child = Process.Start(psi)!;
        string output = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        string? line = output.Split('\n').FirstOrDefault(l => l.StartsWith("SERVING ", StringComparison.Ordinal));
        if (child.ExitCode != 0 || line is null)
        {
            throw new InvalidOperationException($"Serving probe ({count} models, merged={merged}) failed with exit code {child.ExitCode}: {output}");
        }

        return JsonSerializer.Deserialize<Probe>(line["SERVING ".Length..])!;
    }

    /// <summary>One model, PredictionEngine row by row: LoRA unmerged on the shared base vs a private merged copy, side by side.</summary>
    private static void PerRowCost(BenchReport report, MLContext ml, string dir, List<Row> all, bool quick)
    {
        var unmergedModel = ml.Model.Load(ZipPath(dir, 0), out _);
        LoraBaseModels.PrivateMergedCopies = true;
        ITransformer mergedModel;
        try
        {
            mergedModel = ml.Model.Load(ZipPath(dir, 0), out _);
        }
        finally
        {
            LoraBaseModels.PrivateMergedCopies = false;
        }

        var rows = all.Take(quick ? 100 : 300).ToList();
        using var unmerged = ml.Model.CreatePredictionEngine<Row, Prediction>(unmergedModel, new PredictionEngineOptions { OwnsTransformer = false });
        using var merged = ml.Model.CreatePredictionEngine<Row, Prediction>(mergedModel, new PredictionEngineOptions { OwnsTransformer = false });
        float checksum = 0;
        var (unmergedMs, mergedMs) = Measure.Pair(
            () => rows.ForEach(r => checksum += unmerged.Predict(r).Score),
            () => rows.ForEach(r => checksum += merged.Predict(r).Score),
            repetitions: quick ? 3 : 5);
        double a = unmergedMs / rows.Count, b = mergedMs / rows.Count;
        report.Add(new BenchRow("serving", "per-row scoring (PredictionEngine, MiniLM, LoRA q,v r=8)", "ms/row", a, b,
            "shared base, unmerged", "private merged copy", "≤ 1.1×", a / b <= 1.1));
        (unmergedModel as IDisposable)?.Dispose();
        (mergedModel as IDisposable)?.Dispose();
        GC.KeepAlive(checksum);
    }

    private static string ZipPath(string dir, int index) => Path.Combine(dir, $"model-{index}.zip");
}
