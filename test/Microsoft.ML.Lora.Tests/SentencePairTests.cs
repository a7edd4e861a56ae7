using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Sentence pairs (<see cref="LoraFineTuningOptions.TextPairColumnName"/>) through ML.NET on the real embedded MiniLM:
/// Fit, Transform, Evaluate on held-out pairs, Save, and Load in a fresh process (LoadCheck) with bitwise-equal scores,
/// for a key label (pair classification) and a Single label (a cross-encoder similarity score).
/// <para>
/// Data, built here from the sample's 3,000 labelled sentences (TestData/sentiment.tsv, 0 = negative, 1 = positive), the
/// distinct ones of at most 12 words (so a pair fits in 48 tokens): every fifth sentence (index % 5 == 0) is held out,
/// the others train. Within each part the sentences are shuffled (seeded) and paired off, first with second, third with
/// fourth, …, so no sentence is in two pairs and no held-out pair shares a sentence with training. The labels depend on
/// both texts: the key label is how many of the two sentences are positive ("none", "one", "both", about 1 : 2 : 1, so
/// from either text alone at most half the pairs can be placed, as many as by always answering "one"); the Single
/// label is the pair's mean sentiment (0, 0.5 or 1), of whose variance either text alone explains at most half.
/// </para>
/// <para>
/// Why not "same sentiment or not" (1 / 0): measured first with this budget (400 pairs, 3 epochs), it stayed at chance
/// (held-out accuracy 0.58 on 200 balanced pairs, Pearson −0.04 for the 1 / 0 score): agreement is an exclusive-or of
/// the two sentiments, which a few hundred pairs do not teach; the labels above are learnable and still need the pair.
/// </para>
/// </summary>
[TestClass]
public sealed class SentencePairTests
{
    private static readonly string[] CountNames = ["none", "one", "both"];
    private const int TrainPairs = 400;
    private const int HeldOutPairs = 180;
    private static string root = string.Empty;
    private static List<(string Text, string Pair, int Positives)> train = null!;
    private static List<(string Text, string Pair, int Positives)> heldOut = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        var sentences = File.ReadLines(Path.Combine(AppContext.BaseDirectory, "TestData", "sentiment.tsv")).Skip(1)
            .Select(l => l.Split('\t'))
            .Select((p, i) => (Text: p[0], Positive: p[1] == "1", Index: i))
            .ToList();
        Assert.HasCount(3000, sentences);
        // The file repeats some short sentences ("Great phone."): each text is kept once, where it first occurs.
        sentences = sentences.DistinctBy(s => s.Text, StringComparer.Ordinal)
            .Where(s => s.Text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length <= 12).ToList();
        train = Pairs(sentences.Where(s => s.Index % 5 != 0).Select(s => (s.Text, s.Positive)).ToList(), TrainPairs, seed: 1);
        heldOut = Pairs(sentences.Where(s => s.Index % 5 == 0).Select(s => (s.Text, s.Positive)).ToList(), HeldOutPairs, seed: 2);
        var heldOutTexts = heldOut.SelectMany(p => new[] { p.Text, p.Pair }).ToHashSet(StringComparer.Ordinal);
        Assert.IsFalse(train.Any(p => heldOutTexts.Contains(p.Text) || heldOutTexts.Contains(p.Pair)), "no held-out sentence is trained on");
    }

    [ClassCleanup]
    public static void Cleanup() => TinyBert.DeleteTempDirectory(root);

    [TestMethod]
    public void Fit_KeyLabelPairs_ClassifiesHeldOutPairsAndLoadsInFreshProcess()
    {
        var ml = new MLContext(seed: 3);
        var trainData = ml.Data.LoadFromEnumerable(train.Select(p => new PairKeyRow { Text = p.Text, Pair = p.Pair, Label = CountNames[p.Positives] }));
        var heldOutRows = heldOut.Select(p => new PairKeyRow { Text = p.Text, Pair = p.Pair, Label = CountNames[p.Positives] }).ToList();
        using var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoraFineTune(Options()))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"))
            .Fit(trainData);

        var scored = model.Transform(ml.Data.LoadFromEnumerable(heldOutRows));
        var metrics = ml.MulticlassClassification.Evaluate(scored, "Label", "Score", "PredictedLabel");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"pair classification, {heldOutRows.Count} held-out pairs (none : one : both = {heldOutRows.Count(r => r.Label == "none")} : {heldOutRows.Count(r => r.Label == "one")} : {heldOutRows.Count(r => r.Label == "both")}): accuracy {metrics.MicroAccuracy:F4}, log-loss {metrics.LogLoss:F4}"));
        // Measured 0.800 (2 CPU cores, MLContext seed 3). Always answering "one" scores 94 / 180 = 0.52, and so, at best,
        // does a model that reads only one of the two texts; 0.65 is far above both and well below the measured value.
        Assert.IsGreaterThan(0.65, metrics.MicroAccuracy, "held-out accuracy");

        var expected = ml.Data.CreateEnumerable<MulticlassPrediction>(scored, reuseRowObject: false).ToList();
        var reloaded = SaveAndScoreInFreshProcess(ml, model, trainData.Schema, heldOutRows.Select(r => (r.Text, r.Pair)).ToList(), "key");
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.AreEqual(expected[i].PredictedLabel, reloaded[i].Label, $"row {i}");
            CollectionAssert.AreEqual(expected[i].Score, reloaded[i].Scores, $"row {i}: bitwise equal on the CPU");
        }
    }

    [TestMethod]
    public void Fit_SingleLabelPairs_ScoresHeldOutPairsAndLoadsInFreshProcess()
    {
        var ml = new MLContext(seed: 4);
        var trainData = ml.Data.LoadFromEnumerable(train.Select(p => new PairScoreRow { Text = p.Text, Pair = p.Pair, Label = p.Positives / 2f }));
        var heldOutRows = heldOut.Select(p => new PairScoreRow { Text = p.Text, Pair = p.Pair, Label = p.Positives / 2f }).ToList();
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(trainData);
        Assert.AreEqual(LoraTaskKind.Regression, model.Task);

        var scored = model.Transform(ml.Data.LoadFromEnumerable(heldOutRows));
        var metrics = ml.Regression.Evaluate(scored);
        var scores = scored.GetColumn<float>("Score").ToArray();
        double pearson = Pearson(scores, heldOutRows.Select(r => r.Label).ToArray());
        double rmseOfMean = StandardDeviation(heldOutRows.Select(r => (double)r.Label).ToArray());
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"pair similarity, {heldOutRows.Count} held-out pairs: Pearson {pearson:F4}, R² {metrics.RSquared:F4}, RMSE {metrics.RootMeanSquaredError:F4} (predicting the mean: {rmseOfMean:F4})"));
        // Measured: Pearson 0.830, R² 0.687, RMSE 0.193 against 0.346 for predicting the mean (2 CPU cores, MLContext
        // seed 4). Chance is Pearson 0 and R² 0; the bounds sit a safe margin below the measured values.
        Assert.IsGreaterThan(0.6, pearson, "held-out Pearson correlation");
        Assert.IsGreaterThan(0.3, metrics.RSquared, "held-out R² (Regression.Evaluate)");
        Assert.IsLessThan(0.85 * rmseOfMean, metrics.RootMeanSquaredError, "held-out RMSE below predicting the mean");

        var reloaded = SaveAndScoreInFreshProcess(ml, model, trainData.Schema, heldOutRows.Select(r => (r.Text, r.Pair)).ToList(), "single");
        for (int i = 0; i < scores.Length; i++)
        {
            Assert.AreEqual(string.Empty, reloaded[i].Label, "a regression model has no PredictedLabel");
            Assert.AreEqual(scores[i], reloaded[i].Scores.Single(), 0f, $"row {i}: bitwise equal on the CPU");
        }
    }

    private static LoraFineTuningOptions Options() => new()
    {
        BaseModel = PretrainedModel.MiniLmL6V2,
        TextPairColumnName = "Pair",
        MaxSequenceLength = 48,
        BatchSize = 16,
        MaxEpochs = 3,
        LearningRate = 3e-3,
        InferenceBatchSize = 32,
        ProgressInterval = 1000,
    };

    /// <summary>Saves <paramref name="model"/>, scores the rows with LoadCheck (Model.Load in a new process), returns its labels and scores.</summary>
    private static List<(string Label, float[] Scores)> SaveAndScoreInFreshProcess(MLContext ml, ITransformer model, DataViewSchema schema,
        List<(string Text, string Pair)> rows, string name)
    {
        string dir = Path.Combine(root, name);
        Directory.CreateDirectory(dir);
        string modelPath = Path.Combine(dir, "model.zip");
        string textsPath = Path.Combine(dir, "texts.txt");
        string outPath = Path.Combine(dir, "scores.txt");
        ml.Model.Save(model, schema, modelPath);
        Assert.IsTrue(rows.All(r => !r.Text.Contains('\t') && !r.Pair.Contains('\t')), "LoadCheck reads text<TAB>pair lines");
        File.WriteAllLines(textsPath, rows.Select(r => r.Text + "\t" + r.Pair));
        var result = LoadCheckRunner.Run(modelPath, textsPath, outPath);
        Assert.AreEqual(0, result.ExitCode, result.Output);
        var lines = File.ReadAllLines(outPath);
        Assert.HasCount(rows.Count, lines);
        return lines.Select(l => l.Split('\t'))
            .Select(p => (p[0], p[1].Split(',').Select(h => BitConverter.Int32BitsToSingle(int.Parse(h, NumberStyles.HexNumber, CultureInfo.InvariantCulture))).ToArray()))
            .ToList();
    }

    /// <summary>Shuffles the sentences (seeded) and pairs them off, (0, 1), (2, 3), …, <paramref name="count"/> pairs; the label is how many are positive.</summary>
    private static List<(string Text, string Pair, int Positives)> Pairs(List<(string Text, bool Positive)> sentences, int count, int seed)
    {
        var shuffled = sentences.ToArray();
        new Random(seed).Shuffle(shuffled);
        Assert.IsGreaterThanOrEqualTo(2 * count, shuffled.Length, "enough sentences");
        return Enumerable.Range(0, count)
            .Select(i => (shuffled[2 * i].Text, shuffled[2 * i + 1].Text, (shuffled[2 * i].Positive ? 1 : 0) + (shuffled[2 * i + 1].Positive ? 1 : 0)))
            .ToList();
    }

    private static double Pearson(float[] x, float[] y)
    {
        double mx = x.Average(v => (double)v);
        double my = y.Average(v => (double)v);
        double sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Length; i++)
        {
            sxy += (x[i] - mx) * (y[i] - my);
            sxx += (x[i] - mx) * (x[i] - mx);
            syy += (y[i] - my) * (y[i] - my);
        }

        return sxy / Math.Sqrt(sxx * syy);
    }

    /// <summary>Population standard deviation: the RMSE of always predicting the mean.</summary>
    private static double StandardDeviation(double[] values)
    {
        double mean = values.Average();
        return Math.Sqrt(values.Average(v => (v - mean) * (v - mean)));
    }

    public sealed class PairKeyRow
    {
        public string Text { get; set; } = string.Empty;

        public string Pair { get; set; } = string.Empty;

        public string Label { get; set; } = string.Empty;
    }

    public sealed class PairScoreRow
    {
        public string Text { get; set; } = string.Empty;

        public string Pair { get; set; } = string.Empty;

        public float Label { get; set; }
    }
}
