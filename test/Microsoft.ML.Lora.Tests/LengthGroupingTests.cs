using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class LengthGroupingTests
{
    private static string root = string.Empty;
    private static PretrainedModel baseModel = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        baseModel = TinyBert.Create(Path.Combine(root, "base"));
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        TinyBert.DeleteTempDirectory(root);
    }

    /// <summary>Seeded sentences of 1 to 40 words: short and long rows mixed, as real reviews are.</summary>
    private static List<string> MixedLengthTexts(int count, int seed)
    {
        var random = new Random(seed);
        var words = TinyBert.Filler.Concat(TinyBert.Positive).Concat(TinyBert.Negative).ToArray();
        return Enumerable.Range(0, count)
            .Select(_ => string.Join(' ', Enumerable.Range(0, random.Next(2) == 0 ? random.Next(1, 6) : random.Next(6, 41)).Select(_ => words[random.Next(words.Length)])))
            .ToList();
    }

    /// <summary>Tokens a batch is padded to: rows × (longest row's words + [CLS] and [SEP]); one word is one token in the tiny vocabulary.</summary>
    private static long PaddedTokens(IEnumerable<string[]> batches) =>
        batches.Sum(b => (long)b.Length * (b.Max(t => t.Split(' ').Length) + 2));

    [TestMethod]
    public void Batches_SameSeed_SameBatchesEveryRowOnceSameBatchCount()
    {
        var texts = MixedLengthTexts(1000, 1);
        var first = LengthGrouping.Batches(texts, 8, 50 * 8, t => t.Length, new Random(5)).ToList();
        var again = LengthGrouping.Batches(texts, 8, 50 * 8, t => t.Length, new Random(5)).ToList();
        var other = LengthGrouping.Batches(texts, 8, 50 * 8, t => t.Length, new Random(6)).ToList();

        Assert.AreEqual(texts.Chunk(8).Count(), first.Count, "window a multiple of the batch: as many batches as plain chunking");
        Assert.AreEqual(125, first.Count);
        CollectionAssert.AreEqual(first.SelectMany(b => b).ToList(), again.SelectMany(b => b).ToList(), "same seed: same batches in the same order");
        CollectionAssert.AreNotEqual(first.SelectMany(b => b).ToList(), other.SelectMany(b => b).ToList(), "another seed: another batch order");
        CollectionAssert.AreEquivalent(texts, first.SelectMany(b => b).ToList(), "every row exactly once");
        Assert.IsTrue(first.Take(first.Count - 1).All(b => b.Length == 8));
    }

    [TestMethod]
    public void Batches_MixedLengths_FewerPaddedTokensThanPlainBatches()
    {
        var shuffled = ShuffleBuffer.Shuffle(MixedLengthTexts(2000, 2), 8192, new Random(3)).ToList();
        long plain = PaddedTokens(shuffled.Chunk(32));
        long grouped = PaddedTokens(LengthGrouping.Batches(shuffled, 32, 50 * 32, t => t.Length, new Random(4)));
        long real = shuffled.Sum(t => (long)t.Split(' ').Length + 2);

        // Plain batches of 32 mixed rows are nearly all padded to ~42 tokens; sorted windows pad each row to a neighbour's length.
        Assert.IsLessThan(0.6 * plain, (double)grouped, $"padded tokens per epoch: grouped {grouped}, plain {plain}, unpadded {real}");
        Assert.IsLessThan(1.3 * real, (double)grouped, $"grouped batches are nearly unpadded: {grouped} vs {real}");
    }

    [TestMethod]
    public void SortedOrder_Ties_KeepRowOrder()
    {
        var order = LengthGrouping.SortedOrder([5, 2, 9, 5, 2]);
        Assert.AreEqual("1 4 0 3 2", string.Join(' ', order));
    }

    [TestMethod]
    public void Transform_GroupByLength_EqualsUngroupedInRowOrder()
    {
        var ml = new MLContext(seed: 3);
        var train = ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 2, 4).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = 3;
        options.MaxSequenceLength = 48;
        using var model = ml.Transforms.LoraFineTune(options).Fit(train);

        // 131 rows: 2 full windows of 8 × 7 rows and a partial one; lengths 1-40 words.
        var texts = MixedLengthTexts(131, 7);
        var input = ml.Data.LoadFromEnumerable(texts.Select(t => new BinaryRow { Text = t }));
        Assert.IsTrue(model.GroupByLength, "on by default");
        var grouped = ml.Data.CreateEnumerable<BinaryOutput>(model.Transform(input), false).ToList();
        model.GroupByLength = false;
        var plain = ml.Data.CreateEnumerable<BinaryOutput>(model.Transform(input), false).ToList();
        using var engine = ml.Model.CreatePredictionEngine<BinaryRow, BinaryOutput>(model);

        Assert.HasCount(texts.Count, grouped);
        Assert.IsGreaterThan(0.01, (double)(grouped.Max(r => r.Score) - grouped.Min(r => r.Score)), "scores differ between rows");
        for (int i = 0; i < texts.Count; i++)
        {
            Assert.AreEqual(texts[i], grouped[i].Text, "pass-through column in row order");
            Assert.AreEqual(plain[i].Score, grouped[i].Score, 1e-5f, $"row {i}: grouping changes only the padding");
            Assert.AreEqual(engine.Predict(new BinaryRow { Text = texts[i] }).Score, grouped[i].Score, 1e-5f, $"row {i}: the row's own score, in its place");
        }
    }

    [TestMethod]
    public void Fit_GroupByLengthSameSeed_BitwiseSamePredictionsAndGroupingChangesTraining()
    {
        var texts = MixedLengthTexts(150, 8);
        var data = new MLContext().Data.LoadFromEnumerable(texts.Select((t, i) => new BinaryRow { Text = t, Label = t.Contains("good", StringComparison.Ordinal) || i % 5 == 0 }));
        float[] Train(bool group)
        {
            var ml = new MLContext(seed: 42);
            var options = TinyBert.FastOptions(baseModel);
            options.MaxEpochs = 1;
            options.BatchSize = 2;   // windows of 100 rows: the 150 rows make one full and one partial window
            options.MaxSequenceLength = 48;
            options.GroupByLength = group;
            using var model = ml.Transforms.LoraFineTune(options).Fit(data);
            return model.Transform(data).GetColumn<float>("Score").ToArray();
        }

        var first = Train(true);
        var second = Train(true);
        var ungrouped = Train(false);
        CollectionAssert.AreEqual(first, second, new Tolerance(0f), "same seed, same data, CPU: identical");
        Assert.IsGreaterThan(1e-4, (double)first.Zip(ungrouped).Max(p => Math.Abs(p.First - p.Second)), "grouping changes the batches, so the trained model");
    }

    private sealed class Tolerance(float tolerance) : System.Collections.IComparer
    {
        public int Compare(object? x, object? y) => Math.Abs((float)x! - (float)y!) <= tolerance ? 0 : 1;
    }

    public sealed class BinaryOutput
    {
        public string Text { get; set; } = string.Empty;

        public float Score { get; set; }
    }
}
