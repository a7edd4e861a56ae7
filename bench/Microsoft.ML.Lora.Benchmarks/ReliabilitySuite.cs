using System.Globalization;
using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue 13 §1 (load): 1,000 PredictionEngine predictions and 50 load/dispose cycles of a saved MiniLM LoRA model must not
/// grow native memory. Process RSS (after a full GC, so managed garbage does not count) is sampled during both loops; each
/// row compares the end with the first sample after warm-up and reports the least-squares slope.
/// </summary>
internal static class ReliabilitySuite
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

    public static void Run(BenchReport report, string repoRoot, bool quick)
    {
        int predictions = quick ? 200 : 1000, cycles = quick ? 10 : 50;
        var ml = new MLContext(seed: 1);
        string tsv = Path.Combine(repoRoot, "samples", "SentimentLora", "data", "sentiment.tsv");
        var rows = ml.Data.CreateEnumerable<Row>(
            ml.Data.LoadFromTextFile<Row>(tsv, separatorChar: '\t', hasHeader: true, allowQuoting: false), reuseRowObject: false).Take(200).ToList();
        string path = Path.Combine(Path.GetTempPath(), "lora-bench-reliability-" + Guid.NewGuid().ToString("N") + ".zip");
        try
        {
            // One short epoch on 32 sentences: the point is memory over repeated use, not accuracy.
            var train = ml.Data.LoadFromEnumerable(rows.Take(32));
            using (var trained = ml.Transforms.LoraFineTune(new LoraFineTuningOptions { MaxEpochs = 1, BatchSize = 16 }).Fit(train))
            {
                ml.Model.SaveAtomic(trained, train.Schema, path);
            }

            // Predictions: one engine on one loaded model, sentences in turn.
            var model = ml.Model.Load(path, out _);
            var engine = ml.Model.CreatePredictionEngine<Row, Prediction>(model);
            int done = 0;
            var (predictionXs, predictionRss) = Sample(predictions, 20, every => () =>
            {
                for (int i = 0; i < every; i++)
                {
                    engine.Predict(rows[done++ % rows.Count]);
                }
            });
            engine.Dispose();
            (model as IDisposable)?.Dispose();
            AddRow(report, $"process RSS after {predictions} PredictionEngine predictions vs after {(int)predictionXs[1]}", "prediction", predictionXs, predictionRss);

            // Load/dispose cycles: Model.Load, an engine, one prediction, Dispose (the shared base is released with the
            // last model and loaded again by the next Load).
            var (cycleXs, cycleRss) = Sample(cycles, cycles, every => () =>
            {
                for (int i = 0; i < every; i++)
                {
                    var loaded = ml.Model.Load(path, out _);
                    using (var engine = ml.Model.CreatePredictionEngine<Row, Prediction>(loaded))
                    {
                        engine.Predict(rows[i % rows.Count]);
                    }

                    (loaded as IDisposable)?.Dispose();
                }
            });
            AddRow(report, $"process RSS after {cycles} load/dispose cycles vs after cycle {(int)cycleXs[1]}", "cycle", cycleXs, cycleRss);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Runs <paramref name="total"/> units in <paramref name="samples"/> equal steps, with RSS (after a full GC) sampled after each.</summary>
    private static (double[] Xs, double[] Rss) Sample(int total, int samples, Func<int, Action> makeStep)
    {
        int every = total / samples;
        var step = makeStep(every);
        var xs = new List<double>();
        var rss = new List<double>();
        for (int done = every; done <= total; done += every)
        {
            step();
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            xs.Add(done);
            rss.Add(Measure.RssMiB());
        }

        return (xs.ToArray(), rss.ToArray());
    }

    /// <summary>End vs the first sample after warm-up (allocator pools fill early), with the slope over the samples after warm-up.</summary>
    private static void AddRow(BenchReport report, string name, string unit, double[] xs, double[] rss)
    {
        double warm = rss[1], last = rss[^1];
        double slopeKiB = Slope(xs[1..], rss[1..]) * 1024;
        string samples = string.Join(", ", rss.Select(v => v.ToString("F0", CultureInfo.InvariantCulture)));
        report.Add(new BenchRow("reliability", name, "MiB", last, warm, "end", "after warm-up", "≤ 1.05× (flat)", last / warm <= 1.05,
            FormattableString.Invariant($"slope {slopeKiB:F1} KiB per {unit}; RSS samples (MiB): {samples}")));
        report.Note(FormattableString.Invariant($"reliability: {name}: {warm:F0} → {last:F0} MiB, slope {slopeKiB:F1} KiB per {unit} (samples {samples})"));
    }

    /// <summary>Least-squares slope of <paramref name="ys"/> over <paramref name="xs"/>.</summary>
    private static double Slope(double[] xs, double[] ys)
    {
        double mx = xs.Average(), my = ys.Average();
        double sxy = xs.Zip(ys, (x, y) => (x - mx) * (y - my)).Sum();
        double sxx = xs.Sum(x => (x - mx) * (x - mx));
        return sxx == 0 ? 0 : sxy / sxx;
    }
}
