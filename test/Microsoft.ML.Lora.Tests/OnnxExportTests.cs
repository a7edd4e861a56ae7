using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Onnx;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// <see cref="LoraTransformer.ExportOnnx"/> and the TorchSharp-free <see cref="LoraOnnxTransformer"/>: the exported model,
/// run by ONNX Runtime, gives the columns <see cref="LoraTransformer.Transform"/> gives, for each task.
/// </summary>
/// <remarks>
/// Tolerance of the scores: 1e-4 absolute (the bound). Both sides run the same float32 math with different
/// kernels (libtorch vs ONNX Runtime: other summation orders in the matmuls, LayerNorm and softmax); on this 2-layer
/// encoder the differences are rounding noise, a few units of 1e-7 relative per op.
/// </remarks>
[TestClass]
public sealed class OnnxExportTests
{
    private const float ScoreTolerance = 1e-4f;
    private static readonly string[] ClassNames = ["a", "b", "c"];
    private static readonly string[] PublicTypes = ["Microsoft.ML.Lora.Onnx.LoraOnnxTransformer", "Microsoft.ML.LoraOnnxCatalog"];
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

    private static LoraFineTuningOptions Options(PoolingMode pooling = PoolingMode.Mean, string? pair = null)
    {
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = 4;
        options.Pooling = pooling;
        options.TextPairColumnName = pair;
        return options;
    }

    [TestMethod]
    [DataRow(PoolingMode.Mean, false)]
    [DataRow(PoolingMode.Cls, true)]
    public void ExportOnnx_Binary_OnnxRuntimeColumnsEqualTransform(PoolingMode pooling, bool pairs) =>
        _ = CheckBinary(baseModel, pooling, pairs, $"binary-{pooling}-{pairs}");

    /// <summary>A base with a pooler: CLS pooling goes through pooler.dense (with its own LoRA adapter) and tanh.</summary>
    [TestMethod]
    public void ExportOnnx_BinaryClsThroughAdaptedPooler_OnnxRuntimeColumnsEqualTransform()
    {
        string directory = Path.Combine(root, "pooler-base");
        Directory.CreateDirectory(directory);
        File.Copy(Path.Combine(root, "base", "vocab.txt"), Path.Combine(directory, "vocab.txt"));
        var config = new BertConfig { VocabSize = File.ReadAllLines(Path.Combine(directory, "vocab.txt")).Length, HiddenSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 4, IntermediateSize = 64, MaxPositionEmbeddings = 64 };
        TorchSharp.torch.random.manual_seed(2);
        using (var bert = new BertModel(config, addPoolingLayer: true))
        {
            bert.SaveHuggingFace(directory);
        }

        var adapted = CheckBinary(PretrainedModel.FromHuggingFaceFolder(directory), PoolingMode.Cls, pairs: false, "binary-pooler");
        CollectionAssert.Contains(adapted.ToList(), "bert.pooler.dense", "the pooler is adapted, and exported with its ΔW");
    }

    /// <summary>Fits, exports and compares the two transformers' columns; returns the adapted modules.</summary>
    private static IReadOnlyList<string> CheckBinary(PretrainedModel model, PoolingMode pooling, bool pairs, string name)
    {
        var ml = new MLContext(seed: 3);
        var rows = TinyBert.Sentences(64, 2, 2).Select((s, i) => new PairRow { Text = s.Text, Pair = TinyBert.Filler[i % TinyBert.Filler.Length] + " it", Label = s.Class == 0 }).ToList();
        var data = ml.Data.LoadFromEnumerable(rows);
        var options = Options(pooling, pairs ? "Pair" : null);
        options.BaseModel = model;
        using var lora = ml.Transforms.LoraFineTune(options).Fit(data);
        string path = lora.ExportOnnx(Path.Combine(root, name + ".onnx"));
        using var onnx = ml.Transforms.ScoreLoraOnnx(path);

        var expected = ml.Data.CreateEnumerable<BinaryPrediction>(lora.Transform(data), false).ToList();
        var actual = ml.Data.CreateEnumerable<BinaryPrediction>(onnx.Transform(data), false).ToList();
        Assert.HasCount(expected.Count, actual);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.AreEqual(expected[i].Score, actual[i].Score, ScoreTolerance, $"row {i}: the logit");
            Assert.AreEqual(expected[i].Probability, actual[i].Probability, ScoreTolerance, $"row {i}");
            Assert.AreEqual(expected[i].PredictedLabel, actual[i].PredictedLabel, $"row {i} (logit {expected[i].Score})");
        }

        Assert.AreEqual(ml.BinaryClassification.Evaluate(lora.Transform(data)).Accuracy, ml.BinaryClassification.Evaluate(onnx.Transform(data)).Accuracy);
        return [.. lora.AdaptedModules];
    }

    /// <summary>
    /// Texts longer than MaxSequenceLength with HeadTail truncation: the metadata records the strategy and the ONNX
    /// package cuts the same tokens, so its scores equal Transform's; truncating by the head instead would differ.
    /// </summary>
    [TestMethod]
    public void ExportOnnx_HeadTailTruncation_OnnxRuntimeCutsTheSameTokens()
    {
        var ml = new MLContext(seed: 5);
        // The sentiment words sit at the end of each text, after 12 filler words: only the tail sees them.
        var rows = TinyBert.Sentences(48, 2, 4).Select((s, i) => new PairRow
        {
            Text = string.Join(' ', Enumerable.Range(i, 12).Select(k => TinyBert.Filler[k % TinyBert.Filler.Length])) + " " + s.Text,
            Label = s.Class == 0,
        }).ToList();
        var data = ml.Data.LoadFromEnumerable(rows);
        var options = Options();
        options.MaxSequenceLength = 10;
        options.Truncation = TruncationStrategy.HeadTail;
        using var lora = ml.Transforms.LoraFineTune(options).Fit(data);
        string path = lora.ExportOnnx(Path.Combine(root, "headtail.onnx"));
        using var onnx = ml.Transforms.ScoreLoraOnnx(path);

        var expected = ml.Data.CreateEnumerable<BinaryPrediction>(lora.Transform(data), false).ToList();
        var actual = ml.Data.CreateEnumerable<BinaryPrediction>(onnx.Transform(data), false).ToList();
        Assert.HasCount(expected.Count, actual);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.AreEqual(expected[i].Score, actual[i].Score, ScoreTolerance, $"row {i}: the logit of the head+tail tokens");
        }

        // Only the tail holds the sentiment words, so a scorer that kept the head (filler only) would be at chance (0.5);
        // the ONNX scores separate the classes (0.81 measured on these 48 training rows).
        Assert.IsGreaterThan(0.75, ml.BinaryClassification.Evaluate(onnx.Transform(data)).Accuracy, "accuracy of the ONNX scores");

        // Windows average logits before the softmax, which an exported graph cannot: a clear error, no file.
        lora.InferenceWindowStride = 4;
        var refused = Assert.ThrowsExactly<InvalidOperationException>(() => lora.ExportOnnx(Path.Combine(root, "windows.onnx")));
        StringAssert.Contains(refused.Message, "InferenceWindowStride = 4");
        Assert.IsFalse(File.Exists(Path.Combine(root, "windows.onnx")), "nothing is written");
    }

    [TestMethod]
    public void ExportOnnx_Multiclass_OnnxRuntimeColumnsAndAccuracyEqualTransform()
    {
        var ml = new MLContext(seed: 7);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(96, 3, 1).Select(s => new TextRow { Text = s.Text, Label = ((char)('a' + s.Class)).ToString() }));
        var toKey = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data);
        var keyed = toKey.Transform(data);
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(keyed);
        string path = model.ExportOnnx(Path.Combine(root, "multiclass.onnx"));
        using var onnx = ml.Transforms.ScoreLoraOnnx(path, inferenceBatchSize: 5);
        var toValue = ml.Transforms.Conversion.MapKeyToValue("PredictedLabel");

        var test = toKey.Transform(ml.Data.LoadFromEnumerable(TinyBert.Sentences(45, 3, 9).Select(s => new TextRow { Text = s.Text, Label = ((char)('a' + s.Class)).ToString() })));
        var torchScored = model.Transform(test);
        var onnxScored = onnx.Transform(test);
        var expected = ml.Data.CreateEnumerable<MulticlassPrediction>(toValue.Fit(torchScored).Transform(torchScored), false).ToList();
        var actual = ml.Data.CreateEnumerable<MulticlassPrediction>(toValue.Fit(onnxScored).Transform(onnxScored), false).ToList();
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.HasCount(3, actual[i].Score);
            Assert.IsLessThan(ScoreTolerance, MaxAbsDifference(expected[i].Score, actual[i].Score), $"row {i}: class probabilities");
            Assert.AreEqual(expected[i].PredictedLabel, actual[i].PredictedLabel, $"row {i}: the key values travel in the ONNX metadata");
        }

        VBuffer<ReadOnlyMemory<char>> slots = default;
        onnxScored.Schema["Score"].GetSlotNames(ref slots);
        CollectionAssert.AreEqual(ClassNames, slots.DenseValues().Select(v => v.ToString()).ToArray());
        Assert.AreEqual(
            ml.MulticlassClassification.Evaluate(torchScored).MicroAccuracy,
            ml.MulticlassClassification.Evaluate(onnxScored).MicroAccuracy);
    }

    [TestMethod]
    public void ExportOnnx_Regression_OnnxRuntimeScoreInLabelUnitsEqualsTransform()
    {
        var ml = new MLContext(seed: 5);

        // Labels with a mean (10) and a spread (3) far from 0 and 1: the export must undo the label standardisation.
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(72, 3, 3)
            .Select(s => new RegressionRow { Text = s.Text, Label = s.Class switch { 0 => 13f, 1 => 7f, _ => 10f } }));
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(data);
        string path = model.ExportOnnx(Path.Combine(root, "regression.onnx"));
        using var onnx = ml.Transforms.ScoreLoraOnnx(path);

        var expected = ml.Data.CreateEnumerable<RegressionPrediction>(model.Transform(data), false).Select(p => p.Score).ToArray();
        var actual = ml.Data.CreateEnumerable<RegressionPrediction>(onnx.Transform(data), false).Select(p => p.Score).ToArray();
        Assert.IsGreaterThan(1.0, expected.Max() - expected.Min(), "a trained model spreads its predictions");

        // Scores near 10: 1e-4 absolute is 1e-5 relative, still far above float32 noise.
        Assert.IsLessThan(ScoreTolerance, MaxAbsDifference(expected, actual));
    }

    [TestMethod]
    public void LoraOnnxTransformer_SaveLoadAndPredictionEngine_EqualTransform()
    {
        var ml = new MLContext(seed: 3);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 2, 4).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        string path;
        using (var model = ml.Transforms.LoraFineTune(Options()).Fit(data))
        {
            path = model.ExportOnnx(Path.Combine(root, "saveload.onnx"));
        }

        using var onnx = ml.Transforms.ScoreLoraOnnx(path);
        var batched = ml.Data.CreateEnumerable<BinaryPrediction>(onnx.Transform(data), false).ToList();

        string zip = Path.Combine(root, "onnx-model.zip");
        ml.Model.Save(onnx, data.Schema, zip);
        var loaded = ml.Model.Load(zip, out var schema);
        Assert.IsInstanceOfType<LoraOnnxTransformer>(loaded);
        Assert.AreEqual("Label", schema[1].Name);
        var reloaded = ml.Data.CreateEnumerable<BinaryPrediction>(loaded.Transform(data), false).ToList();

        using var engine = ml.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(loaded);
        var texts = TinyBert.Sentences(48, 2, 4).Select(s => s.Text).ToList();
        for (int i = 0; i < batched.Count; i++)
        {
            Assert.AreEqual(batched[i].Score, reloaded[i].Score, 0f, $"row {i}: the zip holds the same ONNX model, bitwise equal");
            var single = engine.Predict(new BinaryRow { Text = texts[i] });

            // One row alone is not padded to the batch's longest row: other summation lengths, float32 noise.
            Assert.AreEqual(batched[i].Score, single.Score, 1e-5f, $"row {i}");
            Assert.AreEqual(batched[i].PredictedLabel, single.PredictedLabel, $"row {i}");
        }

        (loaded as IDisposable)?.Dispose();
    }

    /// <summary>
    /// Very uneven texts (empty, short, cut by truncation, runs of dots) in ONNX batches of 3: the ONNX package's Transform
    /// and PredictionEngine (the batched view and row mapper it shares with LoraTransformer) give TorchSharp's scores, with
    /// and without TorchSharp's length grouping, row by row in order.
    /// </summary>
    [TestMethod]
    public void LoraOnnxTransformer_VeryUnevenTexts_TransformAndPredictionEngineEqualTorchSharp()
    {
        var ml = new MLContext(seed: 3);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 2, 4).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = Options();
        options.MaxSequenceLength = 48;
        using var model = ml.Transforms.LoraFineTune(options).Fit(data);
        string path = model.ExportOnnx(Path.Combine(root, "uneven.onnx"));
        using var onnx = ml.Transforms.ScoreLoraOnnx(path, inferenceBatchSize: 3);

        var texts = TinyBert.UnevenTexts(50, 13);
        var input = ml.Data.LoadFromEnumerable(texts.Select(t => new BinaryRow { Text = t }));
        var actual = ml.Data.CreateEnumerable<BinaryPrediction>(onnx.Transform(input), false).ToList();
        model.GroupByLength = true;
        var grouped = ml.Data.CreateEnumerable<BinaryPrediction>(model.Transform(input), false).ToList();
        model.GroupByLength = false;
        var plain = ml.Data.CreateEnumerable<BinaryPrediction>(model.Transform(input), false).ToList();
        using var engine = ml.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(onnx);

        Assert.HasCount(texts.Count, actual);
        Assert.IsGreaterThan(0.01, (double)(actual.Max(r => r.Score) - actual.Min(r => r.Score)), "scores differ between rows");
        for (int i = 0; i < texts.Count; i++)
        {
            Assert.AreEqual(grouped[i].Score, actual[i].Score, ScoreTolerance, $"row {i}: ONNX Runtime vs TorchSharp (grouped)");
            Assert.AreEqual(plain[i].Score, actual[i].Score, ScoreTolerance, $"row {i}: ONNX Runtime vs TorchSharp (in row order)");
            Assert.AreEqual(grouped[i].PredictedLabel, actual[i].PredictedLabel, $"row {i} (logit {grouped[i].Score})");

            // One row alone is padded to itself only: other summation lengths, float32 noise.
            var single = engine.Predict(new BinaryRow { Text = texts[i] });
            Assert.AreEqual(actual[i].Score, single.Score, 1e-5f, $"row {i}: PredictionEngine");
            Assert.AreEqual(actual[i].Probability, single.Probability, 1e-5f, $"row {i}: PredictionEngine");
        }
    }

    /// <summary>The README's recipe: the exported model in ML.NET's own ONNX transform, fed fixed-length token vectors.</summary>
    [TestMethod]
    public void ApplyOnnxModel_ExportedModelOnFixedLengthTokens_ScoreEqualsTransform()
    {
        var ml = new MLContext(seed: 3);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(40, 2, 6).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        using var model = ml.Transforms.LoraFineTune(Options()).Fit(data);
        string path = model.ExportOnnx(Path.Combine(root, "apply.onnx"));

        // The vocabulary travels in the model's metadata; Microsoft.ML.Tokenizers' BertTokenizer reads it. Each row is
        // [CLS] text [SEP] padded with [PAD] (id 0) to a fixed length, mask 1 on the real tokens, token types 0.
        string vocab;
        using (var session = new Microsoft.ML.OnnxRuntime.InferenceSession(path))
        {
            vocab = session.ModelMetadata.CustomMetadataMap["microsoft.ml.lora.vocab"];
        }

        using var vocabStream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(vocab));
        var tokenizer = Microsoft.ML.Tokenizers.BertTokenizer.Create(vocabStream);
        var texts = TinyBert.Sentences(40, 2, 6).Select(s => s.Text).ToList();
        var tokens = ml.Data.LoadFromEnumerable(texts.Select(t =>
        {
            var ids = tokenizer.EncodeToIds(t);
            var row = new TokenRow();
            for (int i = 0; i < ids.Count; i++)
            {
                row.InputIds[i] = ids[i];
                row.AttentionMask[i] = 1;
            }

            return row;
        }));
        var shapes = new Dictionary<string, int[]>
        {
            ["input_ids"] = [1, TokenRow.Length],
            ["attention_mask"] = [1, TokenRow.Length],
            ["token_type_ids"] = [1, TokenRow.Length],
        };
        var scorer = ml.Transforms.ApplyOnnxModel(["score"], ["input_ids", "attention_mask", "token_type_ids"], path, shapes, recursionLimit: 100).Fit(tokens);
        var scores = scorer.Transform(tokens).GetColumn<float[]>("score").ToArray();
        var expected = ml.Data.CreateEnumerable<BinaryPrediction>(model.Transform(data), false).ToList();
        for (int i = 0; i < texts.Count; i++)
        {
            Assert.HasCount(1, scores[i]);
            Assert.AreEqual(expected[i].Score, scores[i][0], ScoreTolerance, $"row {i}: the logit, whatever the padding");
        }
    }

    [TestMethod]
    public void LoraOnnxTransformer_NotAnOnnxModel_ThrowsNamingTheFile()
    {
        string path = Path.Combine(root, "not-onnx.onnx");
        File.WriteAllText(path, "not a model");
        var e = Assert.ThrowsExactly<InvalidDataException>(() => new MLContext().Transforms.ScoreLoraOnnx(path));
        StringAssert.Contains(e.Message, path);
        Assert.ThrowsExactly<FileNotFoundException>(() => LoraOnnxTransformer.Load(Path.Combine(root, "missing.onnx")));
    }

    [TestMethod]
    public void LoraOnnxAssembly_References_NoTorchSharpAndNoTorchSharpPackages()
    {
        var references = typeof(LoraOnnxTransformer).Assembly.GetReferencedAssemblies().Select(a => a.Name!).ToList();
        CollectionAssert.Contains(references, "Microsoft.ML.OnnxRuntime");
        CollectionAssert.Contains(references, "Microsoft.ML.Tokenizers");
        var forbidden = references.Where(n => n.StartsWith("TorchSharp", StringComparison.Ordinal) || n.StartsWith("Microsoft.ML.Lora", StringComparison.Ordinal)).ToList();
        Assert.IsEmpty(forbidden, string.Join(", ", forbidden));

        // The shared tokenizer and column code is compiled in as internal types: nothing public clashes with Microsoft.ML.Lora.
        var exported = typeof(LoraOnnxTransformer).Assembly.GetExportedTypes().Select(t => t.FullName).Order(StringComparer.Ordinal).ToArray();
        CollectionAssert.AreEqual(PublicTypes, exported);
        Assert.IsFalse(typeof(LoraOnnxTransformer).Assembly.GetType("Microsoft.ML.Lora.Models.BertTextTokenizer", throwOnError: true)!.IsPublic);
    }

    private static float MaxAbsDifference(float[] expected, float[] actual)
    {
        Assert.HasCount(expected.Length, actual);
        return expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
    }
}
