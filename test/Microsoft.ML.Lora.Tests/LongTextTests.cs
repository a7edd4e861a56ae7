using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Long texts (truncation counts in the log, head+tail truncation, sliding windows, the model file), the token cache and
/// validation without a rebuild.
/// </summary>
[TestClass]
public sealed class LongTextTests
{
    private static readonly int[] WindowStarts = [0, 6, 12, 17];
    private static string root = string.Empty;
    private static PretrainedModel baseModel = null!;
    private static BertTextTokenizer tokenizer = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        baseModel = TinyBert.Create(Path.Combine(root, "base"));
        tokenizer = BertTextTokenizer.FromVocabFile(Path.Combine(root, "base", "vocab.txt"));
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        TinyBert.DeleteTempDirectory(root);
    }

    /// <summary>Toy sentences; every fourth gets 30 filler words appended (each tiny-vocabulary word is one token).</summary>
    private static List<BinaryRow> Rows(int count, int seed)
    {
        var random = new Random(seed);
        return TinyBert.Sentences(count, 2, seed).Select((s, i) => new BinaryRow
        {
            Text = i % 4 == 0 ? s.Text + " " + string.Join(' ', Enumerable.Range(0, 30).Select(_ => TinyBert.Filler[random.Next(TinyBert.Filler.Length)])) : s.Text,
            Label = s.Class == 0,
        }).ToList();
    }

    private static List<string> Log(MLContext ml, string source)
    {
        var log = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Source.Contains(source, StringComparison.Ordinal))
            {
                log.Add(e.Message);
            }
        };
        return log;
    }

    private static LoraFineTuningOptions Options()
    {
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = 2;
        options.ProgressInterval = 1000;
        return options;
    }

    private static SortedDictionary<string, float[]> Weights(LoraTransformer model) =>
        new(model.Model.AdapterState().ToDictionary(p => p.Key, p => { using var t = p.Value; return t.data<float>().ToArray(); }), StringComparer.Ordinal);

    private static void AssertSameWeights(LoraTransformer expected, LoraTransformer actual, string message)
    {
        var a = Weights(expected);
        var b = Weights(actual);
        CollectionAssert.AreEqual(a.Keys.ToList(), b.Keys.ToList(), message);
        foreach (var key in a.Keys)
        {
            CollectionAssert.AreEqual(a[key], b[key], $"{message}: {key}");
        }
    }

    [TestMethod]
    public void Fit_LongRows_LogsRowsAndShareOfTokensCut()
    {
        var ml = new MLContext(seed: 3);
        var rows = Rows(40, 5);
        var log = Log(ml, "LoraFineTuning");
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(ml.Data.LoadFromEnumerable(rows));

        // The expected counts from the tokenizer: budget 16 - 2 = 14 word pieces.
        var lengths = rows.Select(r => tokenizer.Tokenize(r.Text).Count).ToList();
        int cutRows = lengths.Count(n => n > 14);
        long source = lengths.Sum(), cut = lengths.Sum(n => Math.Max(0, n - 14));
        Assert.AreEqual(10, cutRows);
        string expected = string.Create(CultureInfo.InvariantCulture,
            $"Fit: 10 of 40 rows (25 %) were longer than MaxSequenceLength 16 tokens; HeadTail truncation cut {cut} of {source} word pieces ({100.0 * cut / source:0.##} %).");
        Assert.AreEqual(1, log.Count(m => m.EndsWith("] " + expected, StringComparison.Ordinal)), string.Join(Environment.NewLine, log));
        Assert.AreEqual(1, log.Count(m => m.Contains("] Token cache: the rows' token ids", StringComparison.Ordinal)), string.Join(Environment.NewLine, log));
    }

    [TestMethod]
    public void Transform_LogsOncePerCursor_WhatTruncationCut()
    {
        var ml = new MLContext(seed: 3);
        var train = Rows(40, 5);
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(ml.Data.LoadFromEnumerable(train));
        var log = Log(ml, nameof(LoraTransformer));
        var test = Rows(20, 6);
        var scores = model.Transform(ml.Data.LoadFromEnumerable(test)).GetColumn<float>("Score").ToArray();
        Assert.HasCount(20, scores);

        var lengths = test.Select(r => tokenizer.Tokenize(r.Text).Count).ToList();
        long source = lengths.Sum(), cut = lengths.Sum(n => Math.Max(0, n - 14));
        string expected = string.Create(CultureInfo.InvariantCulture,
            $"Transform: 5 of 20 rows (25 %) were longer than MaxSequenceLength 16 tokens; HeadTail truncation cut {cut} of {source} word pieces ({100.0 * cut / source:0.##} %).");
        var info = log.Where(m => m.Contains("Kind=Info", StringComparison.Ordinal)).ToList();
        Assert.HasCount(1, info, string.Join(Environment.NewLine, log));
        Assert.EndsWith("] " + expected, info[0]);
    }

    [TestMethod]
    public void Fit_HeadTail_ScoresTheEndOfALongText_AndSurvivesSaveAndLoad()
    {
        var ml = new MLContext(seed: 3);
        var options = Options();
        options.Truncation = TruncationStrategy.HeadTail;
        var train = Rows(40, 5);
        using var model = ml.Transforms.LoraFineTune(options).Fit(ml.Data.LoadFromEnumerable(train));
        Assert.AreEqual(TruncationStrategy.HeadTail, model.Model.Settings.Truncation);

        // Head+tail of 14: 4 head tokens (round(14 × 128 / 510)) and the last 10. A text that differs only in its last
        // 10 words scores differently with HeadTail and the same with Head (which never sees them).
        string head = string.Join(' ', Enumerable.Repeat("the", 20));
        var texts = new[] { head + " good great love nice fine happy good great love nice", head + " bad awful hate poor worst sad bad awful hate poor" };
        var input = ml.Data.LoadFromEnumerable(texts.Select(t => new BinaryRow { Text = t }));
        var scores = model.Transform(input).GetColumn<float>("Score").ToArray();
        Assert.AreNotEqual(scores[0], scores[1]);

        // The model file records the strategy; the loaded model scores the same.
        string path = Path.Combine(root, "headtail.zip");
        ml.Model.Save(model, input.Schema, path);
        var loaded = (LoraTransformer)ml.Model.Load(path, out _);
        Assert.AreEqual(TruncationStrategy.HeadTail, loaded.Model.Settings.Truncation);
        var reloaded = loaded.Transform(input).GetColumn<float>("Score").ToArray();
        for (int i = 0; i < scores.Length; i++)
        {
            Assert.AreEqual(scores[i], reloaded[i], 1e-6f, $"row {i}: same adapter, same base");
        }

        loaded.Dispose();

        options.Truncation = TruncationStrategy.Head;
        using var headModel = new MLContext(seed: 3).Transforms.LoraFineTune(options).Fit(ml.Data.LoadFromEnumerable(train));
        var headScores = headModel.Transform(input).GetColumn<float>("Score").ToArray();
        Assert.AreEqual(headScores[0], headScores[1], 1e-6f, "Head keeps the same first 14 tokens of both texts");
    }

    [TestMethod]
    public void Transform_SlidingWindows_ScoreIsTheMeanOfTheWindowsLogits()
    {
        var ml = new MLContext(seed: 3);
        var options = Options();
        options.InferenceWindowStride = 6;
        using var model = ml.Transforms.LoraFineTune(options).Fit(ml.Data.LoadFromEnumerable(Rows(40, 5)));
        var random = new Random(9);
        var words = TinyBert.Positive.Concat(TinyBert.Negative).Concat(TinyBert.Filler).ToArray();
        var longText = Enumerable.Range(0, 31).Select(_ => words[random.Next(words.Length)]).ToArray();

        // 31 word pieces, windows of 14 every 6: starts 0, 6, 12 and 17 (the last ends with the text).
        CollectionAssert.AreEqual(WindowStarts, TokenTruncation.WindowStarts(31, 14, 6));
        var windows = WindowStarts.Select(s => string.Join(' ', longText.Skip(s).Take(14))).ToList();
        var input = ml.Data.LoadFromEnumerable(windows.Prepend(string.Join(' ', longText)).Select(t => new BinaryRow { Text = t }));
        var scores = model.Transform(input).GetColumn<float>("Score").ToArray();
        float mean = scores.Skip(1).Average();

        // float32 logits, each window once padded and once not: within 1e-5.
        Assert.AreEqual(mean, scores[0], 1e-5f, string.Join(", ", scores));
        Assert.AreNotEqual(scores[1], scores[0], 1e-4f, "the windows disagree, so the mean differs from the head window");
    }

    [TestMethod]
    public void InferenceWindowStride_SetOnATrainedModel_ScoresInWindows_AndIsSaved()
    {
        var ml = new MLContext(seed: 3);
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(ml.Data.LoadFromEnumerable(Rows(40, 5)));
        var test = ml.Data.LoadFromEnumerable(Rows(12, 7));
        var head = model.Transform(test).GetColumn<float>("Score").ToArray();
        model.InferenceWindowStride = 6;
        var windowed = model.Transform(test).GetColumn<float>("Score").ToArray();

        // Rows 0, 4 and 8 are long (windows change their score); the others are one window, scored as before.
        for (int i = 0; i < head.Length; i++)
        {
            if (i % 4 == 0)
            {
                Assert.AreNotEqual(head[i], windowed[i], 1e-6f, $"row {i} is long");
            }
            else
            {
                Assert.AreEqual(head[i], windowed[i], 1e-5f, $"row {i} fits one window");
            }
        }

        string path = Path.Combine(root, "windows.zip");
        ml.Model.Save(model, test.Schema, path);
        var loaded = (LoraTransformer)ml.Model.Load(path, out _);
        Assert.AreEqual(6, loaded.InferenceWindowStride);
        loaded.Dispose();
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => model.InferenceWindowStride = 15);
    }

    [TestMethod]
    public void Options_WindowStrideWithPairOrTooLarge_ThrowNamingIt()
    {
        var ml = new MLContext(seed: 1);
        var options = Options();
        options.InferenceWindowStride = 15;
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.Transforms.LoraFineTune(options));
        Assert.AreEqual(nameof(LoraFineTuningOptions.InferenceWindowStride), e.ParamName);
        options.InferenceWindowStride = 7;
        options.TextPairColumnName = "Pair";
        var pair = Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.LoraFineTune(options));
        Assert.AreEqual(nameof(LoraFineTuningOptions.InferenceWindowStride), pair.ParamName);
        options.TextPairColumnName = null;
        options.Truncation = (TruncationStrategy)5;
        Assert.AreEqual(nameof(LoraFineTuningOptions.Truncation), Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.Transforms.LoraFineTune(options)).ParamName);
    }

    [TestMethod]
    public void Fit_TokenCacheOnOffOrOverflowing_TrainsTheSameWeights()
    {
        var rows = Rows(40, 5);
        LoraTransformer Train(long cacheBytes, out List<string> log)
        {
            var ml = new MLContext(seed: 4);
            log = Log(ml, "LoraFineTuning");
            var options = Options();
            options.TokenCacheBytes = cacheBytes;
            return ml.Transforms.LoraFineTune(options).Fit(ml.Data.LoadFromEnumerable(rows));
        }

        using var cached = Train(1L << 20, out var cachedLog);
        using var off = Train(0, out var offLog);
        using var overflow = Train(1000, out var overflowLog);
        Assert.IsTrue(cachedLog.Any(m => m.Contains("] Token cache: the rows' token ids", StringComparison.Ordinal)), string.Join(Environment.NewLine, cachedLog));
        Assert.IsTrue(offLog.Any(m => m.Contains("] Token cache off (TokenCacheBytes is 0)", StringComparison.Ordinal)), string.Join(Environment.NewLine, offLog));
        Assert.IsTrue(overflowLog.Any(m => m.Contains("] Token cache off: the rows' token ids need more than 1 KiB", StringComparison.Ordinal)), string.Join(Environment.NewLine, overflowLog));
        AssertSameWeights(cached, off, "cached vs streamed");
        AssertSameWeights(cached, overflow, "cached vs overflowed");
    }

    [TestMethod]
    public void TokenCache_ReplaysTheFirstPass_WithinItsBound()
    {
        int passes = 0;
        var rows = Rows(10, 2).Select(r => new TrainingRow(r.Text, null, r.Label ? 1 : 0, 0)).ToList();
        IEnumerable<TrainingRow> Source()
        {
            passes++;
            return rows;
        }

        var cache = new TokenCache(Source, r => tokenizer.EncodeRow(r.Text, null, 16, TruncationStrategy.Head), () => 1L << 20, 1L << 20, 16, TruncationStrategy.Head);
        var first = cache.Rows().ToList();
        var second = cache.Rows().ToList();
        Assert.AreEqual(1, passes, "the second pass comes from memory");
        Assert.IsTrue(cache.IsCached);
        Assert.AreEqual(first.Sum(r => (4L * r.Tokens.Ids.Length) + TokenCache.RowOverheadBytes), cache.Bytes);
        CollectionAssert.AreEqual(first.Select(r => r.Row.Class).ToList(), second.Select(r => r.Row.Class).ToList());
        Assert.IsTrue(second.All(r => r.Row.Text.Length == 0), "the texts are not kept");

        // A bound smaller than the rows: every pass reads the source again.
        var small = new TokenCache(Source, r => tokenizer.EncodeRow(r.Text, null, 16, TruncationStrategy.Head), () => 200, 200, 16, TruncationStrategy.Head);
        _ = small.Rows().ToList();
        _ = small.Rows().ToList();
        Assert.AreEqual(3, passes);
        Assert.IsFalse(small.IsCached);
        Assert.IsTrue(small.Overflowed);
    }

    [TestMethod]
    public void Fit_ValidationSet_NoRebuild_OneBaseLease_SameWeightsAsWithout()
    {
        var rows = Rows(40, 5);
        var valid = Rows(16, 8);
        LoraTransformer Train(bool validate)
        {
            var ml = new MLContext(seed: 6);
            var options = Options();
            options.MaxEpochs = 1;
            options.ValidationSet = validate ? ml.Data.LoadFromEnumerable(valid) : null;
            return ml.Transforms.LoraFineTune(options).Fit(ml.Data.LoadFromEnumerable(rows));
        }

        using var without = Train(validate: false);
        long leases = BaseModelCache.LeasesTaken, loads = BaseModelCache.Loads;
        using var with = Train(validate: true);

        // One model built on one lease of the base (already held, so not read again): no rebuild after Fit.
        Assert.AreEqual(1, BaseModelCache.LeasesTaken - leases);
        Assert.AreEqual(0, BaseModelCache.Loads - loads);

        // One epoch: the kept adapter is the trained one, and validating (eval mode, no merge) left it bitwise as trained.
        AssertSameWeights(without, with, "validation must not change the trained weights");
    }

    [TestMethod]
    public void Load_CheckedInVersion1Model_TruncatesTheHeadWithoutWindows()
    {
        string fixture = Path.Combine(AppContext.BaseDirectory, "TestData", "model-v1");
        string previous = Environment.GetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable) ?? string.Empty;
        Environment.SetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable, Path.Combine(fixture, "base"));
        try
        {
            var chain = (TransformerChain<ITransformer>)new MLContext(seed: 1).Model.Load(Path.Combine(fixture, "model.zip"), out _);
            var model = chain.OfType<LoraTransformer>().Single();
            Assert.AreEqual(TruncationStrategy.Head, model.Truncation);
            Assert.AreEqual(0, model.InferenceWindowStride);
            chain.Dispose();
        }
        finally
        {
            Environment.SetEnvironmentVariable(LoraModelFile.BaseModelOverrideVariable, previous.Length == 0 ? null : previous);
        }
    }
}
