using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Modules;
using TorchSharp;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Serving: one base in memory shared by many adapters, bases found by content (SHA-256) rather than by path, and the
/// transformer's lifetime (idempotent Dispose, engines and cursors that outlive it).
/// </summary>
[TestClass]
public sealed class ServingTests
{
    private static string root = string.Empty;
    private static MLContext context = null!;
    private static IDataView data = null!;
    private static List<string> texts = [];

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        context = new MLContext(seed: 3);
        var sentences = TinyBert.Sentences(40, 2, 31);
        data = context.Data.LoadFromEnumerable(sentences.Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        texts = TinyBert.Sentences(12, 2, 32).Select(s => s.Text).ToList();
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        LoraBaseModels.Clear();
        TinyBert.DeleteTempDirectory(root);
    }

    [TestMethod]
    public void Load_TwoModelsOnOneBase_OneBaseInMemoryAndReadOnce()
    {
        string dir = Path.Combine(root, "one-base");
        var baseModel = TinyBert.Create(Path.Combine(dir, "base"), seed: 11);
        var (pathA, expectedA) = TrainAndSave(baseModel, dir, "a", seed: 1);
        var (pathB, expectedB) = TrainAndSave(baseModel, dir, "b", seed: 2);
        int before = LoraBaseModels.LoadedCount;

        var a = LoadLora(pathA, out var chainA);
        Assert.AreEqual(before + 1, LoraBaseModels.LoadedCount, "the first model loads its base");

        // The base's files are gone: the second model can only get it from memory (found by SHA-256, not read again).
        Directory.Delete(Path.Combine(dir, "base"), recursive: true);
        var b = LoadLora(pathB, out var chainB);
        Assert.AreEqual(before + 1, LoraBaseModels.LoadedCount, "the second model on the same base adds no base");
        Assert.AreSame(a.Model.SharedBase, b.Model.SharedBase);
        Assert.IsFalse(a.Model.MergedCopy, "default: LoRA unmerged on the shared base");

        // Zero copy: both encoders alias the cached tensors (a write through one tree shows in the other).
        var wa = a.Model.Model.Bert.named_parameters().Single(p => p.name == "embeddings.word_embeddings.weight").parameter;
        var wb = b.Model.Model.Bert.named_parameters().Single(p => p.name == "embeddings.word_embeddings.weight").parameter;
        Assert.AreNotSame(wa, wb);
        using (torch.no_grad())
        {
            float old = wa[3, 5].item<float>();
            wa[3, 5] = torch.tensor(old + 1f);
            Assert.AreEqual(old + 1f, wb[3, 5].item<float>(), 0f, "same storage");
            wa[3, 5] = torch.tensor(old);
        }

        CollectionAssert.AreEqual(expectedA, Scores(chainA), "model A as trained (bitwise: same weights, same kernels)");
        CollectionAssert.AreEqual(expectedB, Scores(chainB), "model B as trained");

        (chainA as IDisposable)?.Dispose();
        Assert.AreEqual(before + 1, LoraBaseModels.LoadedCount, "B still holds the base");
        CollectionAssert.AreEqual(expectedB, Scores(chainB), "B unaffected by A's dispose");
        (chainB as IDisposable)?.Dispose();
        Assert.AreEqual(before, LoraBaseModels.LoadedCount, "the last model released the base");
    }

    [TestMethod]
    [DataRow("register")]
    [DataRow("directory")]
    [DataRow("environment")]
    public void Load_TwoBasesMovedToNewFolders_BothLoadInOneProcess(string how)
    {
        string dir = Path.Combine(root, "moved-" + how);
        var base1 = TinyBert.Create(Path.Combine(dir, "old1", "base1"), seed: 21);
        var base2 = TinyBert.Create(Path.Combine(dir, "old2", "base2"), seed: 22);
        var (path1, expected1) = TrainAndSave(base1, dir, "m1", seed: 3);
        var (path2, expected2) = TrainAndSave(base2, dir, "m2", seed: 4);
        string moved = Path.Combine(dir, "new");
        Directory.CreateDirectory(moved);
        Directory.Move(base1.Location, Path.Combine(moved, "base1"));
        Directory.Move(base2.Location, Path.Combine(moved, "base2"));

        string? previous = Environment.GetEnvironmentVariable(LoraBaseModels.SearchPathVariable);
        try
        {
            switch (how)
            {
                case "register":
                    LoraBaseModels.Register(PretrainedModel.FromHuggingFaceFolder(Path.Combine(moved, "base1")));
                    LoraBaseModels.Register(PretrainedModel.FromHuggingFaceFolder(Path.Combine(moved, "base2")));
                    break;
                case "directory":
                    LoraBaseModels.AddSearchDirectory(moved);
                    break;
                default:
                    Environment.SetEnvironmentVariable(LoraBaseModels.SearchPathVariable, Path.Combine(root, "nowhere") + Path.PathSeparator + moved);
                    break;
            }

            var m1 = LoadLora(path1, out var chain1);
            var m2 = LoadLora(path2, out var chain2);
            Assert.AreNotEqual(m1.BaseModelSha256, m2.BaseModelSha256);
            StringAssert.StartsWith(m1.BaseModel.Location, moved, "the base found is the moved one");
            CollectionAssert.AreEqual(expected1, Scores(chain1));
            CollectionAssert.AreEqual(expected2, Scores(chain2));
            (chain1 as IDisposable)?.Dispose();
            (chain2 as IDisposable)?.Dispose();
        }
        finally
        {
            LoraBaseModels.Clear();
            Environment.SetEnvironmentVariable(LoraBaseModels.SearchPathVariable, previous);
        }
    }

    [TestMethod]
    public void Load_NoBaseWithTheRecordedSha_ErrorListsEveryPlaceTriedAndNeverLoadsAnother()
    {
        string dir = Path.Combine(root, "miss");
        var trained = TinyBert.Create(Path.Combine(dir, "base"), seed: 31);
        var (path, _) = TrainAndSave(trained, dir, "m", seed: 5);
        string sha;
        using (var loaded = trained.Load())
        {
            sha = loaded.WeightsSha256;
        }

        // Same folder name and shape, other weights, everywhere the resolver looks.
        Directory.Delete(trained.Location, recursive: true);
        var other = TinyBert.Create(Path.Combine(dir, "registered", "base"), seed: 32);
        TinyBert.Create(Path.Combine(dir, "search", "base"), seed: 33);
        string? previous = Environment.GetEnvironmentVariable(LoraBaseModels.BaseModelVariable);
        Environment.SetEnvironmentVariable(LoraBaseModels.BaseModelVariable, other.Location);
        LoraBaseModels.Register(other);
        LoraBaseModels.AddSearchDirectory(Path.Combine(dir, "search"));
        int before = LoraBaseModels.LoadedCount;
        try
        {
            var error = Assert.Throws<Exception>(() => context.Model.Load(path, out _));
            var inner = Innermost(error);
            Assert.IsInstanceOfType<InvalidDataException>(inner, "a content mismatch is an error, never a silent load");
            string message = inner.Message;
            StringAssert.Contains(message, sha);
            StringAssert.Contains(message, "bases loaded in this process");
            StringAssert.Contains(message, $"{LoraBaseModels.BaseModelVariable} = '{other.Location}'");
            StringAssert.Contains(message, "registered base");
            StringAssert.Contains(message, "search directory '" + Path.Combine(dir, "search") + "'");
            StringAssert.Contains(message, "recorded location '" + trained.Location + "'");
            StringAssert.Contains(message, LoraBaseModels.SearchPathVariable);
            Assert.AreEqual(before, LoraBaseModels.LoadedCount, "nothing was kept");
        }
        finally
        {
            LoraBaseModels.Clear();
            Environment.SetEnvironmentVariable(LoraBaseModels.BaseModelVariable, previous);
        }
    }

    [TestMethod]
    public void PredictionEngines_ThreeModelsFourThreadsEach_ReturnWhatEachModelReturnsAlone()
    {
        string dir = Path.Combine(root, "threads");
        var shared = TinyBert.Create(Path.Combine(dir, "base"), seed: 41);
        var own = TinyBert.Create(Path.Combine(dir, "other"), seed: 42);
        var models = new[] { Train(shared, seed: 6), Train(shared, seed: 7), Train(own, seed: 8) };
        try
        {
            var alone = models.Select(m =>
            {
                using var engine = context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(m, new PredictionEngineOptions { OwnsTransformer = false });
                return texts.Select(t => engine.Predict(new BinaryRow { Text = t }).Score).ToArray();
            }).ToArray();
            Assert.AreNotEqual(alone[0][0], alone[1][0], "two adapters on one base differ");

            var results = new float[12][];
            using var start = new Barrier(12);
            var threads = Enumerable.Range(0, 12).Select(i => new Thread(() =>
            {
                using var engine = context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(models[i % 3], new PredictionEngineOptions { OwnsTransformer = false });
                start.SignalAndWait();
                results[i] = Enumerable.Range(0, 3).SelectMany(_ => texts).Select(t => engine.Predict(new BinaryRow { Text = t }).Score).ToArray();
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());

            for (int i = 0; i < 12; i++)
            {
                for (int j = 0; j < results[i].Length; j++)
                {
                    // Same single-row computation of the same model: bitwise equal, whatever runs beside it.
                    Assert.AreEqual(alone[i % 3][j % texts.Count], results[i][j], 0f, $"thread {i} (model {i % 3}) row {j}");
                }
            }
        }
        finally
        {
            foreach (var m in models)
            {
                m.Dispose();
            }
        }
    }

    [TestMethod]
    public void Dispose_Twice_SecondCallDoesNothingAndEnginesKeepWorking()
    {
        var model = Train(SharedTinyBase(), seed: 9);
        var engine = context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model);
        float expected = engine.Predict(new BinaryRow { Text = texts[0] }).Score;

        model.Dispose();
        model.Dispose();
        Assert.IsFalse(model.IsReleased, "the engine made earlier still holds the model");
        Assert.AreEqual(expected, engine.Predict(new BinaryRow { Text = texts[0] }).Score, 0f);

        engine.Dispose();
        Assert.IsTrue(model.IsReleased, "the engine's own dispose released the last reference");
        model.Dispose();
    }

    [TestMethod]
    public void Transform_AfterDispose_ThrowsObjectDisposed()
    {
        var model = Train(SharedTinyBase(), seed: 10);
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => model.Transform(data));
        Assert.IsTrue(model.IsReleased);
    }

    [TestMethod]
    public void CreatePredictionEngine_AfterDispose_ThrowsObjectDisposed()
    {
        var model = Train(SharedTinyBase(), seed: 10);
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model));
    }

    [TestMethod]
    public void Dispose_OneOfTwoEngines_OtherEngineAndOwnerKeepWorking()
    {
        var model = Train(SharedTinyBase(), seed: 12);
        var first = context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model);
        var second = context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model);
        float expected = first.Predict(new BinaryRow { Text = texts[1] }).Score;
        first.Dispose();
        Assert.AreEqual(expected, second.Predict(new BinaryRow { Text = texts[1] }).Score, 0f);
        Assert.HasCount(40, model.Transform(data).GetColumn<float>("Score").ToArray(), "the owner's transformer is not disposed by an engine");
        using (var third = context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model))
        {
            Assert.AreEqual(expected, third.Predict(new BinaryRow { Text = texts[1] }).Score, 0f);
        }

        second.Dispose();
        Assert.IsFalse(model.IsReleased);
        model.Dispose();
        Assert.IsTrue(model.IsReleased);
    }

    [TestMethod]
    public void PredictionEngines_EightThreadsWhileAnotherThreadDisposes_AllPredictionsCorrect()
    {
        var model = Train(SharedTinyBase(), seed: 13);
        float[] expected;
        using (var engine = context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model))
        {
            expected = texts.Select(t => engine.Predict(new BinaryRow { Text = t }).Score).ToArray();
        }

        var engines = Enumerable.Range(0, 8).Select(_ => context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model)).ToArray();
        var results = new float[8][];
        using var start = new Barrier(9);
        var threads = Enumerable.Range(0, 8).Select(i => new Thread(() =>
        {
            start.SignalAndWait();
            results[i] = Enumerable.Range(0, 5).SelectMany(_ => texts).Select(t => engines[i].Predict(new BinaryRow { Text = t }).Score).ToArray();
            engines[i].Dispose();
        })).ToList();
        threads.ForEach(t => t.Start());
        start.SignalAndWait();
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => context.Model.CreatePredictionEngine<BinaryRow, BinaryPrediction>(model));
        threads.ForEach(t => t.Join());

        for (int i = 0; i < 8; i++)
        {
            for (int j = 0; j < results[i].Length; j++)
            {
                Assert.AreEqual(expected[j % texts.Count], results[i][j], 0f, $"thread {i} row {j}");
            }
        }

        Assert.IsTrue(model.IsReleased, "freed once the owner and all eight engines let go");
    }

    [TestMethod]
    public void Load_PrivateMergedCopies_SameScoresAndSharedBaseUnchanged()
    {
        string dir = Path.Combine(root, "merged");
        var baseModel = TinyBert.Create(Path.Combine(dir, "base"), seed: 51);
        var (path, expected) = TrainAndSave(baseModel, dir, "m", seed: 14);
        var unmerged = LoadLora(path, out var unmergedChain);
        LoraBaseModels.PrivateMergedCopies = true;
        try
        {
            var merged = LoadLora(path, out var mergedChain);
            Assert.IsTrue(merged.Model.MergedCopy);
            Assert.AreSame(unmerged.Model.SharedBase, merged.Model.SharedBase, "the rest of the base stays shared");
            var layers = merged.Model.Model.modules().OfType<LoraLayer>().ToList();
            Assert.IsNotEmpty(layers);
            Assert.IsTrue(layers.All(l => l.merged));

            // Merged = base + ΔW in one matrix: float32 rounding differs from base·x + B·A·x (tiny model, |score| ~ 1).
            CollectionAssert.AreEqual(expected, Scores(mergedChain), new FloatTolerance(1e-5f));

            // The unmerged model on the same base is bitwise as before: the merge wrote into private copies only.
            CollectionAssert.AreEqual(expected, Scores(unmergedChain));
            (mergedChain as IDisposable)?.Dispose();
        }
        finally
        {
            LoraBaseModels.PrivateMergedCopies = false;
            (unmergedChain as IDisposable)?.Dispose();
        }
    }

    [TestMethod]
    public void Load_UnchangedBaseFiles_FingerprintRememberedAndChangedFilesHashedAgain()
    {
        string dir = Path.Combine(root, "fingerprint");
        var baseModel = TinyBert.Create(Path.Combine(dir, "base"), seed: 61);
        Assert.IsFalse(FingerprintCache.TryGet(baseModel, out _));
        string sha;
        using (var loaded = baseModel.Load())
        {
            sha = loaded.WeightsSha256;
        }

        Assert.IsTrue(FingerprintCache.TryGet(baseModel, out string remembered));
        Assert.AreEqual(sha, remembered);

        TinyBert.Create(baseModel.Location, seed: 62);
        Assert.IsFalse(FingerprintCache.TryGet(baseModel, out _), "new files: new stamp");
        using var reloaded = baseModel.Load();
        Assert.AreNotEqual(sha, reloaded.WeightsSha256);
    }

    private static PretrainedModel? sharedTinyBase;

    private static PretrainedModel SharedTinyBase() => sharedTinyBase ??= TinyBert.Create(Path.Combine(root, "shared-base"), seed: 71);

    private static LoraTransformer Train(PretrainedModel baseModel, int seed)
    {
        var ml = new MLContext(seed: seed);
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = 2;
        return ml.Transforms.LoraFineTune(options).Fit(data);
    }

    private static (string Path, float[] Scores) TrainAndSave(PretrainedModel baseModel, string dir, string name, int seed)
    {
        using var model = Train(baseModel, seed);
        string path = Path.Combine(dir, name + ".zip");
        context.Model.Save(model, data.Schema, path);
        return (path, Scores(model));
    }

    private static float[] Scores(ITransformer model)
    {
        var input = context.Data.LoadFromEnumerable(texts.Select(t => new BinaryRow { Text = t }));
        return model.Transform(input).GetColumn<float>("Score").ToArray();
    }

    private static LoraTransformer LoadLora(string path, out ITransformer chain)
    {
        chain = context.Model.Load(path, out _);
        return chain as LoraTransformer ?? ((IEnumerable<ITransformer>)chain).OfType<LoraTransformer>().Single();
    }

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null)
        {
            e = e.InnerException;
        }

        return e;
    }

    private sealed class FloatTolerance(float tolerance) : System.Collections.IComparer
    {
        public int Compare(object? x, object? y) =>
            Math.Abs(Convert.ToSingle(x, CultureInfo.InvariantCulture) - Convert.ToSingle(y, CultureInfo.InvariantCulture)) <= tolerance ? 0 : 1;
    }
}
