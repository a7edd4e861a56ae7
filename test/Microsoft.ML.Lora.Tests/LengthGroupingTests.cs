using Microsoft.ML.Data;
using Microsoft.ML.Lora.Data;
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

    /// <summary>
    /// Very uneven texts (empty, a few words, longer than MaxSequenceLength, runs of dots) through windows of 8 batches of
    /// 4: grouping by token count changes only which rows share a batch (the padding), so each row's score is the
    /// ungrouped one, in its place; with sliding windows too.
    /// </summary>
    [TestMethod]
    [DataRow(0)]
    [DataRow(10)]
    public void Transform_VeryUnevenTexts_GroupedEqualsUngroupedRowByRowInOrder(int stride)
    {
        using var model = FitBinary(inferenceBatchSize: 4);
        model.InferenceWindowStride = stride;
        var ml = new MLContext(seed: 3);
        var texts = TinyBert.UnevenTexts(101, 11);
        var input = ml.Data.LoadFromEnumerable(texts.Select(t => new BinaryRow { Text = t }));
        var tokens = texts.Select(t => model.Model.Tokenizer.Tokenize(t).Count).ToList();
        Assert.IsTrue(tokens.Min() == 0 && tokens.Max() > 100, $"token counts from {tokens.Min()} to {tokens.Max()}");
        Assert.IsTrue(Enumerable.Range(0, texts.Count).Any(i => Enumerable.Range(0, texts.Count).Any(j => texts[i].Length < texts[j].Length && tokens[i] > tokens[j])),
            "some rows are shorter in characters but longer in tokens");

        model.GroupByLength = true;
        var grouped = ml.Data.CreateEnumerable<BinaryOutput>(model.Transform(input), false).ToList();
        model.GroupByLength = false;
        var plain = ml.Data.CreateEnumerable<BinaryOutput>(model.Transform(input), false).ToList();

        Assert.HasCount(texts.Count, grouped);
        Assert.IsGreaterThan(0.01, (double)(grouped.Max(r => r.Score) - grouped.Min(r => r.Score)), "scores differ between rows");
        for (int i = 0; i < texts.Count; i++)
        {
            Assert.AreEqual(texts[i], grouped[i].Text, $"row {i}: pass-through column in row order");

            // Same tokens, other padding: float32 noise only (masked positions add exact zeros to the attention).
            Assert.AreEqual(plain[i].Score, grouped[i].Score, 1e-5f, $"row {i} ({tokens[i]} tokens)");
        }
    }

    /// <summary>Each row's text is tokenized exactly once per Transform pass (grouped or not, windows or not), and once per PredictionEngine row.</summary>
    [TestMethod]
    [DataRow(true, 0)]
    [DataRow(false, 0)]
    [DataRow(true, 10)]
    public void Transform_EachRowTokenizedOncePerPass(bool group, int stride)
    {
        using var model = FitBinary(inferenceBatchSize: 4);
        model.GroupByLength = group;
        model.InferenceWindowStride = stride;
        var ml = new MLContext(seed: 3);
        var texts = TinyBert.UnevenTexts(70, 12);
        var input = ml.Data.LoadFromEnumerable(texts.Select(t => new BinaryRow { Text = t }));
        var tokenizer = model.Model.Tokenizer;
        var scored = model.Transform(input);

        for (int pass = 0; pass < 2; pass++)
        {
            long before = tokenizer.TokenizedTexts;
            var rows = ml.Data.CreateEnumerable<BinaryOutput>(scored, false).ToList();
            Assert.HasCount(texts.Count, rows);
            Assert.AreEqual(texts.Count, tokenizer.TokenizedTexts - before, $"pass {pass}: one tokenization per row");
        }

        long atEngine = tokenizer.TokenizedTexts;
        using var engine = ml.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model);
        foreach (string text in texts.Take(10))
        {
            var prediction = engine.Predict(new BinaryRow { Text = text });
            Assert.AreEqual(prediction.Score > 0, prediction.PredictedLabel, "both columns from the same forward pass");
        }

        Assert.AreEqual(10, tokenizer.TokenizedTexts - atEngine, "a PredictionEngine row is tokenized once for all its columns");
    }

    /// <summary>
    /// The one batched view, on a stand-in model whose input is a length: windows of 8 batches are predicted in batches
    /// sorted by length (ties in row order), each row once, and the outputs come back in the input's row order. 75 rows in
    /// batches of 3: windows of 24, 24, 24 and 3 rows.
    /// </summary>
    [TestMethod]
    public void BatchScoringView_GroupingLength_PredictsSortedBatchesAndRestoresRowOrder()
    {
        var ml = new MLContext(seed: 1);
        var random = new Random(4);
        var lengths = Enumerable.Range(0, 75).Select(_ => random.Next(0, 20)).ToList();
        var input = ml.Data.LoadFromEnumerable(lengths.Select(l => new LengthRow { Length = l }));
        var scorer = new LengthScorer(batchSize: 3);

        var grouped = new BatchScoringView<int>(input, scorer, length => length).GetColumn<float>("Score").ToList();

        CollectionAssert.AreEqual(lengths.Select(l => (float)l).ToList(), grouped, "each row's own output, in row order");
        Assert.HasCount(25, scorer.Batches, "75 rows in batches of 3: as many batches as without grouping");
        int window = 3 * LengthGrouping.InferenceWindowBatches;
        for (int start = 0; start < lengths.Count; start += window)
        {
            var rows = lengths.Skip(start).Take(window).ToList();
            var batches = scorer.Batches.Skip(start / 3).Take((rows.Count + 2) / 3).ToList();
            // A window of one batch or less (here the last, 3 rows) is one batch whatever the order: predicted as it comes.
            var expected = rows.Count <= 3 ? rows : rows.Order().ToList();
            CollectionAssert.AreEqual(expected, batches.SelectMany(b => b).ToList(), $"window at row {start}: sorted by length, cut into batches");
        }

        scorer.Batches.Clear();
        var plain = new BatchScoringView<int>(input, scorer).GetColumn<float>("Score").ToList();
        CollectionAssert.AreEqual(grouped, plain);
        CollectionAssert.AreEqual(lengths, scorer.Batches.SelectMany(b => b).ToList(), "without a grouping length: consecutive rows");
    }

    private static LoraTransformer FitBinary(int inferenceBatchSize)
    {
        var ml = new MLContext(seed: 3);
        var train = ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 2, 4).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = 3;
        options.MaxSequenceLength = 48;
        options.InferenceBatchSize = inferenceBatchSize;
        return ml.Transforms.LoraFineTune(options).Fit(train);
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

    public sealed class LengthRow
    {
        public int Length { get; set; }
    }

    /// <summary>A regression "model" whose input is the Length column and whose score is that length; it records its batches.</summary>
    private sealed class LengthScorer(int batchSize) : IBatchScorer<int>
    {
        private static readonly ColumnNames Columns = new("Length", null, "Score", "PredictedLabel", "Probability");

        public List<int[]> Batches { get; } = [];

        public LabelInfo Label { get; } = LabelInfo.FromColumn(RegressionLabel(), "label");

        public int InferenceBatchSize => batchSize;

        public IReadOnlyList<string> InputColumnNames => [Columns.Text];

        public DataViewSchema GetOutputSchema(DataViewSchema inputSchema) => OutputSchema.Build(inputSchema, Columns, Label);

        public Func<int> CreateInputReader(DataViewRow row)
        {
            var getter = row.GetGetter<int>(row.Schema[Columns.Text]);
            return () =>
            {
                int value = 0;
                getter(ref value);
                return value;
            };
        }

        public bool SameInput(int a, int b) => a == b;

        public void AddReference()
        {
        }

        public void ReleaseReference()
        {
        }

        public float[] Predict(IReadOnlyList<int> inputs)
        {
            Assert.IsLessThanOrEqualTo(batchSize, inputs.Count);
            Batches.Add([.. inputs]);
            return [.. inputs.Select(i => (float)i)];
        }

        private static DataViewSchema.Column RegressionLabel()
        {
            var builder = new DataViewSchema.Builder();
            builder.AddColumn("Label", NumberDataViewType.Single);
            return builder.ToSchema()[0];
        }
    }

    public sealed class BinaryOutput
    {
        public string Text { get; set; } = string.Empty;

        public float Score { get; set; }
    }
}
