using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Image models share their base as text models do (one ResNet-18 in memory for many adapters), and export their adapter
/// in PEFT's format. Two small models on ML.NET's real ResNet-18 (32-px images, one epoch), saved and disposed before the tests.
/// </summary>
[TestClass]
public sealed class ImageModelSharingTests
{
    private const string TargetsA = @"layer4\.2\.conv2";
    private const string TargetsB = @"layer[34]\.\d+\.conv1";
    private static string root = string.Empty;
    private static List<(string Path, string Label)> files = null!;
    private static string zipA = string.Empty;
    private static string zipB = string.Empty;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        files = TestImageFiles.Write(Path.Combine(root, "images"), perClass: 3, seed: 9);
        zipA = Path.Combine(root, "a.zip");
        zipB = Path.Combine(root, "b.zip");
        FitAndSave(4, TargetsA, rank: 1, zipA);
        FitAndSave(5, TargetsB, rank: 2, zipB);
    }

    [ClassCleanup]
    public static void Cleanup() => TinyBert.DeleteTempDirectory(root);

    [TestMethod]
    public void TwoSavedImageModels_LoadedTogether_OneBaseInMemory_PredictAsAlone_DisposeOneKeepsOther()
    {
        var ml = new MLContext(seed: 1);
        var aloneA = LoadAndScore(ml, zipA, out string sha);
        var aloneB = LoadAndScore(ml, zipB, out _);
        bool heldBefore = BaseModelCache.HeldFingerprints().Contains(sha);
        long loads = BaseModelCache.Loads, leases = BaseModelCache.LeasesTaken;

        var a = ml.Model.Load(zipA, out _);
        var b = ml.Model.Load(zipB, out _);
        try
        {
            // The second model finds the base held by the first: nothing is read again (a model still alive from another
            // test class may already hold it, and then neither load reads it).
            Assert.AreEqual(heldBefore ? 0 : 1, BaseModelCache.Loads - loads, "one base load for two image models");
            Assert.AreEqual(2, BaseModelCache.LeasesTaken - leases, "one lease per model");
            var modelA = LoraOf(a).Model;
            var modelB = LoraOf(b).Model;
            Assert.AreSame(modelA.SharedBase, modelB.SharedBase);
            foreach (string name in new[] { "conv1.weight", "layer1.0.conv1.weight", "layer3.0.bn1.running_mean", "layer4.2.conv2.weight" })
            {
                // Same storage: the frozen weights (adapted or not) and BatchNorm statistics are held once.
                var shared = Tensor(modelA.SharedBase, name);
                Assert.IsTrue(Aliases(shared, Tensor(modelA.Model, name)), $"{name} of model A aliases the base");
                Assert.IsTrue(Aliases(shared, Tensor(modelB.Model, name)), $"{name} of model B aliases the base");
            }

            AssertBitwise(aloneA, Score(ml, a), "A beside B");
            AssertBitwise(aloneB, Score(ml, b), "B beside A");
            ((IDisposable)a).Dispose();
            Assert.Contains(sha, BaseModelCache.HeldFingerprints(), "B still holds the base");
            AssertBitwise(aloneB, Score(ml, b), "B after A was disposed");
        }
        finally
        {
            ((IDisposable)a).Dispose();
            ((IDisposable)b).Dispose();
        }

        Assert.AreEqual(heldBefore, BaseModelCache.HeldFingerprints().Contains(sha), "the last model's dispose releases the base");
    }

    [TestMethod]
    public void SavePeftAdapter_ConvFactorsAndConfig_ReimportedIntoFreshResNet_SameOutputs()
    {
        var ml = new MLContext(seed: 1);
        var loaded = ml.Model.Load(zipB, out _);
        string directory = Path.Combine(root, "peft-b");
        try
        {
            var transformer = LoraOf(loaded);
            var model = transformer.Model;
            Assert.AreEqual(directory, transformer.SavePeftAdapter(directory));

            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(directory, PeftAdapter.ConfigFileName)))!;
            Assert.AreEqual(2, (int)config["r"]!);
            Assert.AreEqual(model.Settings.Alpha, (double)config["lora_alpha"]!);
            CollectionAssert.Contains(config["modules_to_save"]!.AsArray().Select(n => (string)n!).ToList(), "fc");
            var targets = config["target_modules"]!;
            Assert.HasCount(5, model.AdaptedModules, "layer3: 2 blocks, layer4: 3 blocks");
            foreach (var adapted in model.AdaptedModules)
            {
                bool named = targets is JsonArray list
                    ? list.Any(t => (string)t! == adapted || adapted.EndsWith("." + (string)t!, StringComparison.Ordinal))
                    : Regex.IsMatch(adapted, $"^(?:{(string)targets!})$");
                Assert.IsTrue(named, $"the config's target_modules {targets.ToJsonString()} names {adapted}");
            }

            var (tensors, _) = SafeTensors.Read(Path.Combine(directory, PeftAdapter.WeightsFileName));
            try
            {
                var layers = model.Model.named_modules().Where(m => m.module is Modules.LoraLayer).ToDictionary(m => m.name, m => (Modules.LoraLayer)m.module);
                Assert.HasCount(5, layers);
                foreach (var (path, layer) in layers)
                {
                    var fileA = tensors[$"base_model.model.{path}.lora_A.weight"];
                    var fileB = tensors[$"base_model.model.{path}.lora_B.weight"];
                    Assert.AreEqual(4, fileA.dim(), $"{path}: PEFT's conv lora_A [r, in, k, k]");
                    Assert.IsTrue(Same(fileA, layer.lora_A!), $"{path}.lora_A equals the model's");
                    Assert.IsTrue(Same(fileB, layer.lora_B!), $"{path}.lora_B equals the model's");
                }

                Assert.IsTrue(Same(tensors["base_model.model.fc.weight"], Tensor(model.Model, "fc.weight")), "multiclass head as it is");
                Assert.AreEqual(2 * 5 + 2, tensors.Count, "5 factor pairs and the head");
            }
            finally
            {
                foreach (var t in tensors.Values)
                {
                    t.Dispose();
                }
            }

            // PEFT's loader into a fresh import of the same base, with a head of the same size, gives the model's logits.
            using var fresh = ResNet.FromOnnx(DnnImageModels.ResNet18Path(), numClasses: 3);
            var loadedLayers = PeftAdapter.Load(fresh, directory, log: _ => { });
            Assert.HasCount(5, loadedLayers);
            fresh.eval();
            var images = files.Take(6).Select(f => Decode(ml, File.ReadAllBytes(f.Path), model.Settings.ImageSize)).ToList();
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var expected = model.Forward(images);
            var rgb = tensor(images.SelectMany(i => i).ToArray(), [images.Count, 3, model.Settings.ImageSize, model.Settings.ImageSize]).to_type(ScalarType.Float32);
            var actual = fresh.call(model.Normalization.Apply(rgb));
            double difference = (actual - expected).abs().max().item<float>();
            Console.WriteLine($"PEFT re-import: max |difference| {difference:E2} on logits up to {expected.abs().max().item<float>():F2}");

            // The fresh model merges ΔW into its kernels in eval mode; the loaded one runs the branch beside them.
            Assert.IsLessThan(1e-5, difference);
        }
        finally
        {
            ((IDisposable)loaded).Dispose();
        }
    }

    private static void FitAndSave(int seed, string targets, int rank, string path)
    {
        var ml = new MLContext(seed: seed);
        var data = ml.Data.LoadFromEnumerable(files.Select(f => new ImageFineTuningTests.ImageBytesRow { Image = File.ReadAllBytes(f.Path), Label = f.Label }).ToList());
        var options = new LoraImageFineTuningOptions
        {
            ImageSize = 32,
            Rank = rank,
            Alpha = 2 * rank,
            TargetModules = targets,
            MaxEpochs = 1,
            BatchSize = 3,
            LearningRate = 3e-3,
        };
        using var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoraFineTuneImage(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"))
            .Fit(data);
        ml.Model.Save(model, data.Schema, path);
    }

    private static List<float[]> LoadAndScore(MLContext ml, string path, out string sha)
    {
        var model = ml.Model.Load(path, out _);
        try
        {
            sha = LoraOf(model).BaseModelSha256;
            return Score(ml, model);
        }
        finally
        {
            ((IDisposable)model).Dispose();
        }
    }

    private static List<float[]> Score(MLContext ml, ITransformer model)
    {
        var data = ml.Data.LoadFromEnumerable(files.Select(f => new ImageFineTuningTests.ImageBytesRow { Image = File.ReadAllBytes(f.Path), Label = f.Label }).ToList());
        return ml.Data.CreateEnumerable<ImageFineTuningTests.ImagePrediction>(model.Transform(data), reuseRowObject: false).Select(r => r.Score).ToList();
    }

    private static void AssertBitwise(List<float[]> expected, List<float[]> actual, string what)
    {
        Assert.HasCount(expected.Count, actual);
        for (int i = 0; i < expected.Count; i++)
        {
            CollectionAssert.AreEqual(expected[i], actual[i], $"{what}: row {i} bitwise as when loaded alone");
        }
    }

    private static LoraImageTransformer LoraOf(ITransformer model) =>
        ((IEnumerable<ITransformer>)model).OfType<LoraImageTransformer>().Single();

    private static Tensor Tensor(nn.Module module, string name) =>
        module.state_dict().TryGetValue(name, out var t) ? t : throw new AssertFailedException($"no tensor {name}");

    /// <summary>Whether <paramref name="other"/> shows a change made through <paramref name="source"/> (doubling, then halving back: exact in float32).</summary>
    private static bool Aliases(Tensor source, Tensor other)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var before = other.clone();
        source.mul_(2);
        bool changed = other.eq(before * 2).all().item<bool>() && !other.eq(before).all().item<bool>();
        source.div_(2);
        return changed;
    }

    private static bool Same(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        return a.shape.SequenceEqual(b.shape) && a.cpu().eq(b.detach().cpu()).all().item<bool>();
    }

    private static byte[] Decode(MLContext ml, byte[] encoded, int side)
    {
        var view = ml.Data.LoadFromEnumerable(new[] { new ImageFineTuningTests.ImageBytesRow { Image = encoded } });
        using var cursor = view.GetRowCursor(view.Schema);
        var read = Engine.Images.ImageColumnReader.For(view.Schema, "Image", side, "input").CreateReader(cursor);
        Assert.IsTrue(cursor.MoveNext());
        return read();
    }
}
