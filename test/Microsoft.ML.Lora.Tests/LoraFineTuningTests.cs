using System.Globalization;
using System.IO.Compression;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class LoraFineTuningTests
{
    private static string root = string.Empty;
    private static PretrainedModel baseModel = null!;
    private static MLContext context = null!;
    private static TransformerChain<Microsoft.ML.Transforms.KeyToValueMappingTransformer> multiclass = null!;
    private static IDataView multiclassData = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        baseModel = TinyBert.Create(Path.Combine(root, "base"));
        context = new MLContext(seed: 7);
        multiclassData = context.Data.LoadFromEnumerable(TinyBert.Sentences(96, 3, 1)
            .Select(s => new TextRow { Text = s.Text, Label = ((char)('a' + s.Class)).ToString() }));
        multiclass = MulticlassPipeline(context).Fit(multiclassData);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        (multiclass as IDisposable)?.Dispose();
        TinyBert.DeleteTempDirectory(root);
    }

    internal static LoraFineTuningOptions FastOptions(PretrainedModel model) => TinyBert.FastOptions(model);

    private static EstimatorChain<Microsoft.ML.Transforms.KeyToValueMappingTransformer> MulticlassPipeline(MLContext ml, LoraFineTuningOptions? options = null) =>
        ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoraFineTune(options ?? FastOptions(baseModel)))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));

    /// <summary>Collects the messages that fine-tuning writes to <paramref name="ml"/>'s log.</summary>
    private static List<string> FineTuningLog(MLContext ml)
    {
        var log = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Source.Contains("LoraFineTuning", StringComparison.Ordinal))
            {
                log.Add(e.Message);
            }
        };
        return log;
    }

    private static LoraTransformer LoraOf(ITransformer chain) =>
        ((IEnumerable<ITransformer>)chain).OfType<LoraTransformer>().Single();

    [TestMethod]
    public void Fit_KeyLabel_TrainsMulticlassThatEvaluatorsAccept()
    {
        // Held-out rows (another seed: other word combinations), not the training rows.
        var heldOut = context.Data.LoadFromEnumerable(TinyBert.Sentences(60, 3, 101)
            .Select(s => new TextRow { Text = s.Text, Label = ((char)('a' + s.Class)).ToString() }));
        var scored = multiclass.Transform(heldOut);
        var metrics = context.MulticlassClassification.Evaluate(scored, "Label", "Score", "PredictedLabel");

        // Toy data: each class has its own words; on unseen sentences 0.85 was measured (chance is 1/3).
        Assert.IsGreaterThanOrEqualTo(0.75, metrics.MacroAccuracy, $"held-out macro accuracy {metrics.MacroAccuracy}");
        var lora = LoraOf(multiclass);
        Assert.AreEqual(LoraTaskKind.MulticlassClassification, lora.Task);

        var rows = context.Data.CreateEnumerable<MulticlassPrediction>(scored, reuseRowObject: false).ToList();
        var labels = heldOut.GetColumn<string>("Label").ToList();
        foreach (var row in rows)
        {
            Assert.HasCount(3, row.Score);
            Assert.AreEqual(1.0, row.Score.Sum(), 1e-5, "softmax probabilities sum to 1 (float32 rounding)");
            int best = Array.IndexOf(row.Score, row.Score.Max());
            Assert.AreEqual(((char)('a' + best)).ToString(), row.PredictedLabel, "PredictedLabel maps back to the arg-max class value");
        }

        Assert.AreEqual(metrics.MicroAccuracy, rows.Zip(labels).Count(p => p.First.PredictedLabel == p.Second) / (double)rows.Count, 1e-12,
            "PredictedLabel (after MapKeyToValue) is right exactly as often as the evaluator counts");
    }

    [TestMethod]
    public void Fit_BooleanLabel_TrainsBinaryWithProbability()
    {
        var ml = new MLContext(seed: 3);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(80, 2, 2).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var heldOut = ml.Data.LoadFromEnumerable(TinyBert.Sentences(60, 2, 102).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        using var model = ml.Transforms.LoraFineTune(FastOptions(baseModel)).Fit(data);
        Assert.AreEqual(LoraTaskKind.BinaryClassification, model.Task);
        var scored = model.Transform(heldOut);
        var metrics = ml.BinaryClassification.Evaluate(scored);

        // Held-out sentences: 0.85 measured (51 of 60); chance is 0.5.
        Assert.IsGreaterThanOrEqualTo(0.75, metrics.Accuracy, $"held-out accuracy {metrics.Accuracy}");
        foreach (var row in ml.Data.CreateEnumerable<BinaryPrediction>(scored, false))
        {
            Assert.AreEqual(1 / (1 + Math.Exp(-row.Score)), row.Probability, 1e-6, "Probability is the logistic of Score");
            Assert.AreEqual(row.Score > 0, row.PredictedLabel);
        }
    }

    [TestMethod]
    public void Fit_SingleLabel_TrainsRegression()
    {
        var ml = new MLContext(seed: 5);

        // Target: +2 for positive words, -2 for negative words, 0 neutral.
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(90, 3, 3)
            .Select(s => new RegressionRow { Text = s.Text, Label = s.Class switch { 0 => 2f, 1 => -2f, _ => 0f } }));
        var heldOut = ml.Data.LoadFromEnumerable(TinyBert.Sentences(60, 3, 103)
            .Select(s => new RegressionRow { Text = s.Text, Label = s.Class switch { 0 => 2f, 1 => -2f, _ => 0f } }));
        using var model = ml.Transforms.LoraFineTune(FastOptions(baseModel)).Fit(data);
        Assert.AreEqual(LoraTaskKind.Regression, model.Task);
        var metrics = ml.Regression.Evaluate(model.Transform(heldOut));

        // On held-out sentences: the label variance is 8/3 ≈ 2.67; a model that learned the word classes explains most of it.
        Assert.IsGreaterThan(0.8, metrics.RSquared, $"R² {metrics.RSquared}, MSE {metrics.MeanSquaredError}");
    }

    [TestMethod]
    [DataRow(true, Recomputation.None, DisplayName = "GradientCheckpointing = true (full)")]
    [DataRow(false, Recomputation.Selective, DisplayName = "Recomputation = Selective")]
    public void Fit_GradientCheckpointing_TrainsTheSameModel(bool gradientCheckpointing, Recomputation recomputation)
    {
        // Same seed, same data: checkpointing recomputes the layers or their attention cores (replaying dropout) instead
        // of keeping activations, so training follows the same path. Tolerance: float32 reordering in the recomputed
        // backward, compounded over 3 epochs.
        var data = context.Data.LoadFromEnumerable(TinyBert.Sentences(48, 3, 9).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        float[] Scores(bool checkpointing, Recomputation mode)
        {
            var options = FastOptions(baseModel);
            options.MaxEpochs = 3;
            options.GradientCheckpointing = checkpointing;
            options.Recomputation = mode;
            using var model = new MLContext(seed: 4).Transforms.LoraFineTune(options).Fit(data);
            return model.Transform(data).GetColumn<float>("Score").ToArray();
        }

        var plain = Scores(false, Recomputation.None);
        var checkpointed = Scores(gradientCheckpointing, recomputation);
        Assert.IsGreaterThan(0.1, plain.Max() - plain.Min(), "the model learned something (scores spread)");
        CollectionAssert.AreEqual(plain, checkpointed, new Tolerance(1e-4f));
    }

    [TestMethod]
    public void Options_GradientCheckpointingWithSelectiveOrUndefinedRecomputation_ThrowsNamingRecomputation()
    {
        var both = FastOptions(baseModel);
        both.GradientCheckpointing = true;
        both.Recomputation = Recomputation.Selective;
        var conflict = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(both));
        Assert.AreEqual(nameof(LoraFineTuningOptions.Recomputation), conflict.ParamName);
        StringAssert.Contains(conflict.Message, "GradientCheckpointing", StringComparison.Ordinal);

        var undefined = FastOptions(baseModel);
        undefined.Recomputation = (Recomputation)9;
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(undefined));
        Assert.AreEqual(nameof(LoraFineTuningOptions.Recomputation), error.ParamName);
    }

    [TestMethod]
    public void PredictionEngine_SingleAndFourThreads_EqualBatchedTransform()
    {
        var texts = TinyBert.Sentences(24, 3, 11).Select(s => s.Text).ToList();
        var input = context.Data.LoadFromEnumerable(texts.Select(t => new TextRow { Text = t }));
        var batched = context.Data.CreateEnumerable<MulticlassPrediction>(multiclass.Transform(input), false).ToList();

        using var engine = context.Model.CreatePredictionEngine<TextRow, MulticlassPrediction>(multiclass);
        var single = texts.Select(t => engine.Predict(new TextRow { Text = t })).ToList();
        for (int i = 0; i < texts.Count; i++)
        {
            // Batches pad rows to the longest one; padding is masked out, but summation order differs: float32 noise.
            CollectionAssert.AreEqual(batched[i].Score, single[i].Score, new Tolerance(1e-5f), $"row {i}");
            Assert.AreEqual(batched[i].PredictedLabel, single[i].PredictedLabel);
        }

        var results = new MulticlassPrediction[4][];
        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, thread =>
        {
            using var own = context.Model.CreatePredictionEngine<TextRow, MulticlassPrediction>(multiclass);
            results[thread] = Enumerable.Range(0, 3).SelectMany(_ => texts).Select(t => own.Predict(new TextRow { Text = t })).ToArray();
        });

        foreach (var result in results)
        {
            for (int i = 0; i < result.Length; i++)
            {
                CollectionAssert.AreEqual(single[i % texts.Count].Score, result[i].Score, new Tolerance(0f), "same single-row computation on every thread: bitwise equal");
            }
        }
    }

    [TestMethod]
    public void Save_Zip_HoldsOnlyLoraAndHeadTensors()
    {
        string path = Path.Combine(root, "zip-check.zip");
        context.Model.Save(multiclass, multiclassData.Schema, path);
        using var zip = ZipFile.OpenRead(path);
        var entry = zip.Entries.Single(e => e.FullName.EndsWith(LoraModelFile.TensorStreamName, StringComparison.Ordinal));
        using var reader = new BinaryReader(entry.Open());
        var tensors = TensorFile.Read(reader);
        try
        {
            var lora = LoraOf(multiclass);
            Assert.IsTrue(tensors.Keys.All(LoraTextModel.IsAdapterTensor), string.Join(", ", tensors.Keys));
            Assert.HasCount(2 * lora.AdaptedModules.Count + 2, tensors, "A and B per adapted module, classifier weight and bias");
            Assert.AreEqual(lora.TrainableParameterCount, tensors.Values.Sum(t => t.numel()));
            Assert.IsFalse(tensors.Keys.Any(k => k.Contains("word_embeddings", StringComparison.Ordinal) || k.EndsWith(".weight", StringComparison.Ordinal) && !k.StartsWith("classifier", StringComparison.Ordinal)));
        }
        finally
        {
            foreach (var t in tensors.Values)
            {
                t.Dispose();
            }
        }

        long baseBytes = new FileInfo(Path.Combine(root, "base", "model.safetensors")).Length;
        Assert.IsLessThan(baseBytes, new FileInfo(path).Length, "the zip is smaller than the base weights it does not contain");
    }

    [TestMethod]
    public void SaveLoad_InSeparateProcess_PredictionsBitwiseEqual()
    {
        string dir = Path.Combine(root, "process");
        Directory.CreateDirectory(dir);
        string modelPath = Path.Combine(dir, "model.zip");
        string textsPath = Path.Combine(dir, "texts.txt");
        string outPath = Path.Combine(dir, "scores.txt");
        context.Model.Save(multiclass, multiclassData.Schema, modelPath);
        var texts = TinyBert.Sentences(20, 3, 21).Select(s => s.Text).ToList();
        File.WriteAllLines(textsPath, texts);
        var input = context.Data.LoadFromEnumerable(texts.Select(t => new TextRow { Text = t }));
        var expected = context.Data.CreateEnumerable<MulticlassPrediction>(multiclass.Transform(input), false).ToList();

        var result = LoadCheckRunner.Run(modelPath, textsPath, outPath);
        Assert.AreEqual(0, result.ExitCode, result.Output);
        var lines = File.ReadAllLines(outPath);
        Assert.HasCount(texts.Count, lines);
        for (int i = 0; i < lines.Length; i++)
        {
            var parts = lines[i].Split('\t');
            Assert.AreEqual(expected[i].PredictedLabel, parts[0]);
            var bits = parts[1].Split(',').Select(h => BitConverter.Int32BitsToSingle(int.Parse(h, NumberStyles.HexNumber, CultureInfo.InvariantCulture))).ToArray();
            CollectionAssert.AreEqual(expected[i].Score, bits, new Tolerance(0f), $"row {i}: bitwise equal on the CPU");
        }
    }

    [TestMethod]
    public void Load_BaseWeightsChanged_ThrowsNamingFingerprintAndOverride()
    {
        string dir = Path.Combine(root, "mismatch");
        // Seeds other than the class's base (seed 1): bases are found by content, so a model trained on a copy of a base
        // that is loaded in this process loads from memory wherever its own folder went.
        var otherBase = TinyBert.Create(Path.Combine(dir, "base"), seed: 3);
        var ml = new MLContext(seed: 1);
        var options = FastOptions(otherBase);
        options.MaxEpochs = 1;
        var model = MulticlassPipeline(ml, options).Fit(multiclassData);
        string path = Path.Combine(dir, "model.zip");
        ml.Model.Save(model, multiclassData.Schema, path);
        (model as IDisposable)?.Dispose();

        TinyBert.Create(Path.Combine(dir, "base"), seed: 4);
        var error = Assert.Throws<Exception>(() => ml.Model.Load(path, out _));
        string message = Flatten(error);
        StringAssert.Contains(message, "SHA-256");
        StringAssert.Contains(message, otherBase.Location);
        StringAssert.Contains(message, LoraModelFile.BaseModelOverrideVariable);

        Directory.Delete(Path.Combine(dir, "base"), recursive: true);
        var missing = Assert.Throws<Exception>(() => ml.Model.Load(path, out _));
        string missingMessage = Flatten(missing);
        StringAssert.Contains(missingMessage, otherBase.Location);
        StringAssert.Contains(missingMessage, LoraModelFile.BaseModelOverrideVariable);
    }

    [TestMethod]
    public void Fit_SameSeed_BitwiseSamePredictions()
    {
        var data = context.Data.LoadFromEnumerable(TinyBert.Sentences(40, 2, 9).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        float[] Train()
        {
            var ml = new MLContext(seed: 42);
            var options = FastOptions(baseModel);
            options.MaxEpochs = 2;
            using var model = ml.Transforms.LoraFineTune(options).Fit(data);
            return model.Transform(data).GetColumn<float>("Score").ToArray();
        }

        var first = Train();
        var second = Train();
        CollectionAssert.AreEqual(first, second, new Tolerance(0f), "same seed, same data, CPU: identical");
    }

    [TestMethod]
    public void Fit_ValidationSet_StopsEarlyAndKeepsBestEpochsAdapter()
    {
        // A validation set on which the best model is only moderately confident: every third validation row has the
        // opposite label. Training on clean rows first lowers the validation loss (two rows gained for each one lost),
        // then, as the logits grow past ln 2 (where 2·σ(−z) = σ(z)), raises it: the validation curve has a minimum after
        // which it rises, so with patience 2 training must stop long before MaxEpochs, and the last epoch's adapter is
        // worse than the best one.
        var ml = new MLContext(seed: 8);
        var train = ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 2, 12).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var valid = ml.Data.LoadFromEnumerable(TinyBert.Sentences(24, 2, 13).Select((s, i) => new BinaryRow { Text = s.Text, Label = (s.Class == 0) ^ (i % 3 == 2) }));
        const int patience = 2;
        var options = FastOptions(baseModel);
        options.MaxEpochs = 20;
        options.ValidationSet = valid;
        options.EarlyStoppingPatience = patience;
        options.ProgressInterval = 1000;
        var reports = new List<LoraTrainingProgress>();
        options.Progress = new SynchronousProgress<LoraTrainingProgress>(reports.Add);
        using var model = ml.Transforms.LoraFineTune(options).Fit(train);

        // One report per epoch run (the interval is longer than an epoch), each with a validation loss and accuracy.
        var losses = reports.Select(r => r.ValidationLoss!.Value).ToArray();
        string curve = string.Join(", ", losses.Select(l => l.ToString("F4", CultureInfo.InvariantCulture)));
        CollectionAssert.AreEqual(Enumerable.Range(1, reports.Count).ToArray(), reports.Select(r => r.Epoch).ToArray(), curve);
        Assert.IsTrue(losses.All(double.IsFinite), curve);
        Assert.IsTrue(reports.All(r => r.ValidationAccuracy is >= 0 and <= 1), string.Join(", ", reports.Select(r => r.ValidationAccuracy)));

        // Stopped early, exactly `patience` epochs after the best one, and those epochs did not improve on it.
        int bestEpoch = Array.IndexOf(losses, losses.Min()) + 1;
        Assert.IsLessThan(options.MaxEpochs, reports.Count, $"early stopping ended training: {reports.Count} epochs ({curve})");
        Assert.AreEqual(bestEpoch + patience, reports.Count, $"stopped {patience} epochs after the best (epoch {bestEpoch}): {curve}");
        Assert.IsGreaterThan(1, bestEpoch, $"the validation loss fell first: {curve}");
        Assert.IsGreaterThan(losses[bestEpoch - 1] + 1e-3, losses[^1], $"the last epoch is clearly worse than the best: {curve}");

        // The kept adapter is the best epoch's: the binary cross-entropy recomputed from Transform's scores (logits) is
        // the best epoch's validation loss (float32 summation, other batching), not the last epoch's.
        var scored = model.Transform(valid);
        var labels = valid.GetColumn<bool>("Label").ToArray();
        var scores = scored.GetColumn<float>("Score").ToArray();
        double keptLoss = scores.Zip(labels, (z, y) => Math.Max(z, 0) - (y ? z : 0) + Math.Log(1 + Math.Exp(-Math.Abs(z)))).Average();
        Assert.AreEqual(losses[bestEpoch - 1], keptLoss, 1e-5, $"kept adapter's validation loss; curve {curve}");
        // Its reported accuracy is what Transform gives, up to one row: validation batches the rows in order, Transform
        // groups them by length (other padding, float32 rounding), so a logit within rounding of 0 could flip.
        Assert.AreEqual(reports[bestEpoch - 1].ValidationAccuracy!.Value, Accuracy(scored), 1.0 / 24 + 1e-12, $"epoch {bestEpoch} of {reports.Count}");

        // The kept adapter, copied back into the trained model, is what Load rebuilds: a save/load round trip is bitwise equal.
        string path = Path.Combine(root, "validation.zip");
        ml.Model.Save(model, train.Schema, path);
        var loaded = ml.Model.Load(path, out _);
        var before = model.Transform(valid).GetColumn<float>("Score").ToArray();
        var after = loaded.Transform(valid).GetColumn<float>("Score").ToArray();
        CollectionAssert.AreEqual(before, after, new Tolerance(0f));
        (loaded as IDisposable)?.Dispose();
    }

    [TestMethod]
    public void Fit_BinaryValidationSetOneEpoch_ValidationAccuracyAndLossAreThoseOfTransform()
    {
        var ml = new MLContext(seed: 11);
        var train = ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 2, 21).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var valid = ml.Data.LoadFromEnumerable(TinyBert.Sentences(30, 2, 22).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = FastOptions(baseModel);
        options.MaxEpochs = 1;
        options.LearningRate = 3e-3;
        options.ValidationSet = valid;
        options.ProgressInterval = 1000;
        var reports = new List<LoraTrainingProgress>();
        var log = FineTuningLog(ml);
        options.Progress = new SynchronousProgress<LoraTrainingProgress>(reports.Add);
        using var model = ml.Transforms.LoraFineTune(options).Fit(train);

        var report = reports.Single();
        Assert.IsNotNull(report.ValidationAccuracy);
        double accuracy = report.ValidationAccuracy.Value;

        // One epoch: validation ran the returned model itself (eval mode, no merge), so both see bitwise the same
        // weights and batches: same predictions, same accuracy.
        var scored = model.Transform(valid);
        Assert.AreEqual(Accuracy(scored), accuracy, 0.0, "exact: same weights, same batches");
        Assert.IsTrue(accuracy is > 0 and < 1, $"accuracy {accuracy}: a value strictly between 0 and 1 shows the count is per row");

        // Same pass as the loss: binary cross-entropy recomputed from Transform's scores (logits) matches the reported
        // loss to float32 summation error.
        var labels = valid.GetColumn<bool>("Label").ToArray();
        var scores = scored.GetColumn<float>("Score").ToArray();
        double bce = scores.Zip(labels, (z, y) => Math.Max(z, 0) - (y ? z : 0) + Math.Log(1 + Math.Exp(-Math.Abs(z)))).Average();
        Assert.AreEqual(bce, report.ValidationLoss!.Value, 1e-5, "float32 loss per batch");
        Assert.IsTrue(log.Any(m => m.Contains(string.Create(CultureInfo.InvariantCulture, $"validation accuracy {accuracy:F4}"), StringComparison.Ordinal)), string.Join(Environment.NewLine, log));
    }

    [TestMethod]
    public void Fit_MulticlassValidationSetOneEpoch_ValidationAccuracyEqualsEvaluatedAccuracy()
    {
        var ml = new MLContext(seed: 12);
        var train = ml.Data.LoadFromEnumerable(TinyBert.Sentences(150, 3, 23).Select(s => new TextRow { Text = s.Text, Label = ((char)('a' + s.Class)).ToString() }));
        var valid = ml.Data.LoadFromEnumerable(TinyBert.Sentences(33, 3, 24).Select(s => new TextRow { Text = s.Text, Label = ((char)('a' + s.Class)).ToString() }));
        var options = FastOptions(baseModel);
        options.MaxEpochs = 1;
        options.LearningRate = 1e-2;

        // The validation labels must be keys of the same dictionary as the training labels: MapValueToKey fitted on
        // the training rows (as the pipeline's own MapValueToKey is).
        options.ValidationSet = ml.Transforms.Conversion.MapValueToKey("Label").Fit(train).Transform(valid);
        options.ProgressInterval = 1000;
        var reports = new List<LoraTrainingProgress>();
        options.Progress = new SynchronousProgress<LoraTrainingProgress>(reports.Add);
        var pipeline = MulticlassPipeline(ml, options).Fit(train);
        try
        {
            var metrics = ml.MulticlassClassification.Evaluate(pipeline.Transform(valid), "Label", "Score", "PredictedLabel");

            // Exact for one epoch (see the binary test); argmax over three scores, as PredictedLabel.
            double accuracy = reports.Single().ValidationAccuracy!.Value;
            Assert.AreEqual(metrics.MicroAccuracy, accuracy, 0.0, "exact: same weights, same batches");
            Assert.IsTrue(accuracy is > 0.5 and < 1, $"accuracy {accuracy}: above what predicting one class gives (1/3), so the argmax varies by row");
        }
        finally
        {
            (pipeline as IDisposable)?.Dispose();
        }
    }

    [TestMethod]
    [DataRow(true, DisplayName = "regression with a validation set")]
    [DataRow(false, DisplayName = "classification without a validation set")]
    public void Fit_RegressionOrNoValidationSet_ValidationAccuracyIsNull(bool regression)
    {
        var ml = new MLContext(seed: 13);
        var sentences = TinyBert.Sentences(32, 2, 25);
        var data = regression
            ? ml.Data.LoadFromEnumerable(sentences.Select(s => new RegressionRow { Text = s.Text, Label = s.Class }))
            : ml.Data.LoadFromEnumerable(sentences.Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = FastOptions(baseModel);
        options.MaxEpochs = 2;
        options.ProgressInterval = 1;
        options.ValidationSet = regression ? data : null;
        var reports = new List<LoraTrainingProgress>();
        options.Progress = new SynchronousProgress<LoraTrainingProgress>(reports.Add);
        using var model = ml.Transforms.LoraFineTune(options).Fit(data);

        // Two steps per epoch plus an end-of-epoch report each; the validation loss is there only with a validation set.
        Assert.HasCount(6, reports);
        Assert.IsTrue(reports.All(r => r.ValidationAccuracy is null));
        Assert.AreEqual(regression ? 2 : 0, reports.Count(r => r.ValidationLoss is not null));
    }

    private static double Accuracy(IDataView scored)
    {
        var labels = scored.GetColumn<bool>("Label").ToArray();
        var predicted = scored.GetColumn<bool>("PredictedLabel").ToArray();
        return (double)labels.Zip(predicted).Count(p => p.First == p.Second) / labels.Length;
    }

    [TestMethod]
    public void Dispose_LastReference_FreesModelAndLaterPredictionsThrow()
    {
        var ml = new MLContext(seed: 2);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(20, 2, 6).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = FastOptions(baseModel);
        options.MaxEpochs = 1;
        var model = ml.Transforms.LoraFineTune(options).Fit(data);
        var engine = ml.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model);
        engine.Dispose();

        // The engine (which owns its transformer, as ML.NET's default) released only its own reference.
        Assert.HasCount(20, model.Transform(data).GetColumn<float>("Score").ToArray());
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => model.Transform(data).GetColumn<float>("Score").ToArray());
    }

    [TestMethod]
    public void Fit_CancelExecution_ThrowsOperationCanceled()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(200, 2, 4).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = FastOptions(baseModel);
        options.MaxEpochs = 50;
        options.BatchSize = 4;
        options.ProgressInterval = 1;
        int reports = 0;
        options.Progress = new SynchronousProgress<LoraTrainingProgress>(_ =>
        {
            if (++reports == 3)
            {
                MlNetHost.CancelExecution(ml);
            }
        });
        Assert.Throws<OperationCanceledException>(() => ml.Transforms.LoraFineTune(options).Fit(data));

        // Stopped within one batch of the request: 50 epochs of 50 steps were planned.
        Assert.AreEqual(3, reports);
    }

    [TestMethod]
    public void Fit_CancellationToken_ThrowsOperationCanceled()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(200, 2, 4).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        using var cancellation = new CancellationTokenSource();
        var options = FastOptions(baseModel);
        options.MaxEpochs = 50;
        options.BatchSize = 4;
        options.ProgressInterval = 1;
        options.CancellationToken = cancellation.Token;
        int reports = 0;
        options.Progress = new SynchronousProgress<LoraTrainingProgress>(_ =>
        {
            if (++reports == 2)
            {
                cancellation.Cancel();
            }
        });
        Assert.Throws<OperationCanceledException>(() => ml.Transforms.LoraFineTune(options).Fit(data));
        Assert.AreEqual(2, reports);
    }

    [TestMethod]
    public void Fit_Progress_ReportsStepsLossAndSchedule()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(64, 2, 4).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = FastOptions(baseModel);
        options.MaxEpochs = 2;
        options.ProgressInterval = 1;
        options.WarmupRatio = 0.25;
        var reports = new List<LoraTrainingProgress>();
        var log = FineTuningLog(ml);
        options.Progress = new SynchronousProgress<LoraTrainingProgress>(reports.Add);
        using var model = ml.Transforms.LoraFineTune(options).Fit(data);

        // 64 rows / 16 = 4 steps per epoch, 8 in all, 2 of warm-up; one report per step plus one per epoch end.
        Assert.AreEqual(8, reports[^1].TotalSteps);
        Assert.AreEqual(8, reports[^1].Step);
        var perStep = reports.Where((r, i) => i == 0 || r.Step != reports[i - 1].Step).ToList();
        Assert.AreEqual(options.LearningRate * 0.5, perStep[0].LearningRate, 1e-12, "warm-up step 1 of 2");
        Assert.AreEqual(options.LearningRate, perStep[1].LearningRate, 1e-12, "peak after warm-up");
        Assert.AreEqual(options.LearningRate / 6, perStep[^1].LearningRate, 1e-12, "linear decay: last step 1/6 of the peak");
        Assert.IsTrue(reports.All(r => double.IsFinite(r.Loss) && r.RowsPerSecond > 0));
        Assert.IsTrue(log.Any(m => m.Contains("step 8/8", StringComparison.Ordinal)), string.Join(Environment.NewLine, log));
    }

    [TestMethod]
    public void Fit_HugeLearningRate_ThrowsNamingStep()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(64, 2, 4).Select(s => new RegressionRow { Text = s.Text, Label = s.Class }));
        var options = FastOptions(baseModel);
        options.LearningRate = 1e30;
        options.ClipNorm = 0;
        options.WarmupRatio = 0;
        options.Dropout = 0;
        var error = Assert.Throws<InvalidOperationException>(() => ml.Transforms.LoraFineTune(options).Fit(data));
        StringAssert.Contains(error.Message, "optimizer step");
        StringAssert.Contains(error.Message, "LearningRate");
    }

    [TestMethod]
    public void Fit_EmptyData_ThrowsBeforeWork()
    {
        var data = context.Data.LoadFromEnumerable(new List<BinaryRow>());
        var error = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(FastOptions(baseModel)).Fit(data));
        StringAssert.Contains(error.Message, "no rows");
        StringAssert.Contains(error.Message, "'Label'");
    }

    [TestMethod]
    public void Fit_SingleClass_ThrowsNamingLabel()
    {
        var data = context.Data.LoadFromEnumerable(TinyBert.Sentences(10, 1, 1).Select(s => new BinaryRow { Text = s.Text, Label = true }));
        var error = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(FastOptions(baseModel)).Fit(data));
        StringAssert.Contains(error.Message, "single class");
        StringAssert.Contains(error.Message, "'Label'");
    }

    [TestMethod]
    public void Fit_StringLabel_ThrowsNamingColumnAndTypes()
    {
        var data = context.Data.LoadFromEnumerable(new[] { new TextRow { Text = "good", Label = "a" } });
        var estimator = context.Transforms.LoraFineTune(FastOptions(baseModel));
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => estimator.Fit(data));
        StringAssert.Contains(error.Message, "'Label'");
        StringAssert.Contains(error.Message, "String");
        StringAssert.Contains(error.Message, "MapValueToKey");

        var shapeError = Assert.Throws<ArgumentOutOfRangeException>(() => estimator.GetOutputSchema(MlNetHost.ShapeOf(data.Schema)));
        StringAssert.Contains(shapeError.Message, "'Label'");
    }

    [TestMethod]
    public void GetOutputSchema_MissingOrNonTextColumn_ThrowsNamingColumn()
    {
        var data = context.Data.LoadFromEnumerable(new[] { new BinaryRow { Text = "good", Label = true } });
        var options = FastOptions(baseModel);
        options.TextColumnName = "Review";
        var missing = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(options).GetOutputSchema(MlNetHost.ShapeOf(data.Schema)));
        StringAssert.Contains(missing.Message, "'Review'");

        options.TextColumnName = "Label";
        options.LabelColumnName = "Label";
        var wrongType = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(options).Fit(data));
        StringAssert.Contains(wrongType.Message, "'Label'");
        StringAssert.Contains(wrongType.Message, "Boolean");
        StringAssert.Contains(wrongType.Message, "expected String");

        var lora = LoraOf(multiclass);
        var noText = new DataViewSchema.Builder();
        noText.AddColumn("Other", TextDataViewType.Instance);
        var noTextError = Assert.Throws<ArgumentOutOfRangeException>(() => lora.GetOutputSchema(noText.ToSchema()));
        StringAssert.Contains(noTextError.Message, "'Text'");
        var numericText = new DataViewSchema.Builder();
        numericText.AddColumn("Text", NumberDataViewType.Single);
        var numericError = Assert.Throws<ArgumentOutOfRangeException>(() => lora.GetOutputSchema(numericText.ToSchema()));
        StringAssert.Contains(numericError.Message, "Single");
    }

    [TestMethod]
    public void GetOutputSchema_KeyLabel_AddsScoreVectorAndKeyPrediction()
    {
        var estimator = context.Transforms.Conversion.MapValueToKey("Label").Append(context.Transforms.LoraFineTune(FastOptions(baseModel)));
        var shape = estimator.GetOutputSchema(MlNetHost.ShapeOf(multiclassData.Schema));
        var score = shape.Single(c => c.Name == "Score");
        Assert.AreEqual(SchemaShape.Column.VectorKind.Vector, score.Kind);
        var predicted = shape.Single(c => c.Name == "PredictedLabel");
        Assert.IsTrue(predicted.IsKey);
        Assert.IsTrue(predicted.Annotations.Any(c => c.Name == "KeyValues"));

        var actual = multiclass.GetOutputSchema(multiclassData.Schema);
        Assert.AreEqual(3, ((VectorDataViewType)actual["Score"].Type).Size);
    }

    [TestMethod]
    public void Options_Invalid_ThrowNamingTheOption()
    {
        var options = FastOptions(baseModel);
        options.Rank = 0;
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => context.Transforms.LoraFineTune(options));
        Assert.AreEqual("Rank", error.ParamName);
        options = FastOptions(baseModel);
        options.TargetModules = ["nothing_matches"];
        var data = context.Data.LoadFromEnumerable(TinyBert.Sentences(10, 2, 1).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var noMatch = Assert.Throws<ArgumentException>(() => context.Transforms.LoraFineTune(options).Fit(data));
        StringAssert.Contains(noMatch.Message, "nothing_matches");
    }

    [TestMethod]
    public void Fit_GpuRequestedWithoutCudaAndNoFallback_ThrowsTorchSharpText()
    {
        var ml = new MLContext(seed: 1) { GpuDeviceId = 0, FallbackToCpu = false };
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(10, 2, 1).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        if (TorchSharp.torch.cuda.is_available())
        {
            Assert.Inconclusive("A CUDA device is present; this test covers machines without one.");
        }

        var error = Assert.Throws<InvalidOperationException>(() => ml.Transforms.LoraFineTune(FastOptions(baseModel)).Fit(data));
        StringAssert.StartsWith(error.Message, DeviceResolver.NoGpuMessage);
    }

    [TestMethod]
    [DataRow(null, false, 0, "cpu")]
    [DataRow(0, true, 0, "cpu")]
    [DataRow(1, true, 2, "cuda:1")]
    [DataRow(0, false, 1, "cuda:0")]
    public void DeviceResolver_Settings_PickDevice(int? gpu, bool fallback, int cudaCount, string expected)
    {
        var device = DeviceResolver.Resolve(gpu, fallback, cudaCount);
        string actual = device.type == TorchSharp.DeviceType.CPU ? "cpu" : $"cuda:{device.index}";
        Assert.AreEqual(expected, actual);
    }

    private static string Flatten(Exception e)
    {
        var parts = new List<string>();
        for (var x = e; x is not null; x = x.InnerException)
        {
            parts.Add(x.Message);
        }

        return string.Join(" | ", parts);
    }

    /// <summary>Calls back on the reporting thread (Progress&lt;T&gt; would post to the thread pool).</summary>
    private sealed class SynchronousProgress<T>(Action<T> action) : IProgress<T>
    {
        public void Report(T value) => action(value);
    }

    private sealed class Tolerance(float tolerance) : System.Collections.IComparer
    {
        public int Compare(object? x, object? y)
        {
            float a = (float)x!, b = (float)y!;
            if (tolerance == 0f)
            {
                return BitConverter.SingleToInt32Bits(a) == BitConverter.SingleToInt32Bits(b) ? 0 : 1;
            }

            return Math.Abs(a - b) <= tolerance ? 0 : 1;
        }
    }
}
