using System.Buffers.Binary;
using System.Text.Json;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// LoRA on the convolutions of a ResNet (PEFT's conv factorisation: lora_A [r, in, k, k], lora_B [out, r, 1, 1]) with a
/// trainable linear head, on a tiny random ResNet laid out like the ML.NET import.
/// </summary>
[TestClass]
public sealed class ResNetLoraTests
{
    private static LoraConfig Config(bool merge = true) => new()
    {
        r = 4,
        lora_alpha = 8,
        target_modules_regex = @"(conv1|layer\d\.\d\.conv[12])",
        modules_to_save = ["fc"],
        merge_weights = merge,
    };

    /// <summary>Gives every lora_B random values (it starts at zero), so the adapter changes the output.</summary>
    private static void RandomizeLoraB(ResNet model, int seed)
    {
        torch.manual_seed(seed);
        using var noGrad = no_grad();
        foreach (var (name, p) in model.named_parameters().Where(p => p.name.Contains("lora_B", StringComparison.Ordinal)))
        {
            p.copy_(randn_like(p).mul_(0.1));
        }
    }

    [TestMethod]
    public void InjectByRegex_AllConvolutionsButShortcut_ReplacedWithPeftShapes()
    {
        using var model = TinyResNet.Create(seed: 60);
        var replaced = lora.inject_adapter_in_model(Config(), model);
        CollectionAssert.AreEqual(new[] { "conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2" }, replaced.ToArray());
        var sd = model.state_dict();
        CollectionAssert.AreEqual(new long[] { 4, 8, 3, 3 }, sd["layer2.0.conv1.lora_A"].shape);
        CollectionAssert.AreEqual(new long[] { 16, 4, 1, 1 }, sd["layer2.0.conv1.lora_B"].shape);
        Assert.IsFalse(sd.Keys.Any(k => k.StartsWith("layer2.0.downsample", StringComparison.Ordinal) && k.Contains("lora", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void TrainingStep_ConvLoraAndHead_GradientsReachOnlyLoraAndHeadAndBatchNormStaysFrozen()
    {
        using var scope = NewDisposeScope();
        using var model = TinyResNet.Create(seed: 61);
        lora.inject_adapter_in_model(Config(), model);
        RandomizeLoraB(model, seed: 62);
        var runningMean = model.state_dict()["layer1.0.bn1.running_mean"].clone();
        Tensor evalOutput;
        using (no_grad())
        {
            model.eval();
            evalOutput = model.forward(TinyResNet.Images(seed: 63));
        }

        model.train();
        Assert.IsTrue(model.modules().OfType<BatchNorm2d>().All(bn => !bn.training), "BatchNorm stays in evaluation mode");
        var images = TinyResNet.Images(seed: 63);
        var labels = tensor(new long[] { 0, 1, 2, 1 });
        var logits = model.forward(images);
        nn.functional.cross_entropy(logits, labels).backward();

        var trainable = new List<string>();
        foreach (var (name, p) in model.named_parameters())
        {
            bool expected = name.Contains(".lora_", StringComparison.Ordinal) || name.StartsWith("fc.", StringComparison.Ordinal);
            Assert.AreEqual(expected, p.requires_grad, name);
            if (expected)
            {
                Assert.IsNotNull(p.grad, name);
                Assert.IsGreaterThan(0.0, p.grad.abs().sum().item<float>(), $"{name} gets a non-zero gradient");
                trainable.Add(name);
            }
            else
            {
                Assert.IsNull(p.grad, name);
            }
        }

        Assert.AreEqual(5 * 2 + 2, trainable.Count, "5 adapted convolutions × (A, B) + head weight and bias");

        // Stored statistics: unchanged by the training-mode forward, and that forward equals evaluation mode's (dropout 0).
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(runningMean, model.state_dict()["layer1.0.bn1.running_mean"]));
        Assert.IsLessThan(1e-5, TestData.MaxAbsDiff(evalOutput, logits));
    }

    [TestMethod]
    public void Eval_MergedConvLora_EqualsUnmergedOutput()
    {
        using var scope = NewDisposeScope();
        using var model = TinyResNet.Create(seed: 64);
        var baseWeight = model.state_dict()["layer2.0.conv1.weight"].clone();
        lora.inject_adapter_in_model(Config(), model);
        RandomizeLoraB(model, seed: 65);
        var images = TinyResNet.Images(seed: 66);
        using var noGrad = no_grad();
        model.train();
        var unmerged = model.forward(images);
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(baseWeight, model.state_dict()["layer2.0.conv1.weight"]), "not merged while training");

        model.eval();
        var merged = model.forward(images);
        Assert.IsGreaterThan(1e-3, TestData.MaxAbsDiff(baseWeight, model.state_dict()["layer2.0.conv1.weight"]), "ΔW merged into the kernel");

        // Same math, float32, different summation order (ΔW added to W before the convolution).
        Assert.IsLessThan(1e-5, TestData.MaxAbsDiff(unmerged, merged));
        model.train();
        Assert.IsLessThan(1e-6, TestData.MaxAbsDiff(baseWeight, model.state_dict()["layer2.0.conv1.weight"]), "unmerged again");
    }

    [TestMethod]
    public void Inference_MergedLoraWithFoldedBatchNorm_EqualsUnmergedWithBatchNorm()
    {
        using var scope = NewDisposeScope();
        using var model = TinyResNet.Create(seed: 70);
        lora.inject_adapter_in_model(Config(), model);
        RandomizeLoraB(model, seed: 71);
        var images = TinyResNet.Images(seed: 72);
        using var noGrad = no_grad();
        model.train();
        var reference = model.forward(images);
        Assert.AreEqual(0, model.Folds.Sum(f => f.FoldCount), "training mode never folds");

        model.eval();
        var folded = model.forward(images);
        Assert.AreEqual(6, model.Folds.Count(f => f.FoldCount == 1), "stem, 2 blocks × 2, 1 shortcut: each folded once");
        Assert.IsTrue(model.modules().OfType<ILoraLayer>().All(l => l.merged));

        // The cache is reused while nothing changes.
        model.forward(images).Dispose();
        Assert.AreEqual(6, model.Folds.Count(f => f.FoldCount == 1));

        model.FoldBatchNorm = false;
        var mergedUnfolded = model.forward(images);
        model.FoldBatchNorm = true;

        // Unmerged LoRA branch + BN against one kernel W·s + ΔW·s: float32 rounding, outputs of order 1.
        Assert.IsLessThan(1e-4, TestData.MaxAbsDiff(reference, folded));
        Assert.IsLessThan(1e-4, TestData.MaxAbsDiff(mergedUnfolded, folded));
        Assert.IsGreaterThan(0.0, TestData.MaxAbsDiff(mergedUnfolded, folded), "the folded path really ran");

        // With gradients on, evaluation mode runs conv then BN (the folded kernels carry no gradient).
        int folds = model.Folds.Sum(f => f.FoldCount);
        using (enable_grad())
        {
            model.forward(images).Dispose();
        }

        Assert.AreEqual(folds, model.Folds.Sum(f => f.FoldCount));
    }

    [TestMethod]
    public void Inference_AdapterChangedOrUnmergedAfterFolding_FollowsTheAdapter()
    {
        using var scope = NewDisposeScope();
        using var model = TinyResNet.Create(seed: 73);
        lora.inject_adapter_in_model(Config(), model);
        RandomizeLoraB(model, seed: 74);
        var images = TinyResNet.Images(seed: 75);
        using var noGrad = no_grad();
        model.eval();
        model.forward(images).Dispose();

        // New factors written in place while merged and folded (as a model file's adapter is loaded).
        RandomizeLoraB(model, seed: 76);
        var folded = model.forward(images);
        Assert.AreEqual(5, model.Folds.Count(f => f.FoldCount == 2), "the 5 adapted convolutions folded again");
        model.FoldBatchNorm = false;
        var expected = model.forward(images);
        model.FoldBatchNorm = true;
        Assert.IsLessThan(1e-4, TestData.MaxAbsDiff(expected, folded));

        // An adapter unmerged in evaluation mode: its layer runs unfolded (W, the branch, then BN), the others stay folded.
        var layer = (ILoraLayer)model.named_modules().Single(m => m.name == "layer2.0.conv1").module;
        layer.unmerge();
        var partly = model.forward(images);
        Assert.IsLessThan(1e-4, TestData.MaxAbsDiff(expected, partly));
        Assert.IsFalse(layer.merged);
    }

    [TestMethod]
    public void Train_AfterFoldedInference_SameGradientsAndStateAsBefore()
    {
        using var scope = NewDisposeScope();
        using var model = TinyResNet.Create(seed: 77);
        lora.inject_adapter_in_model(Config(), model);
        RandomizeLoraB(model, seed: 78);
        var images = TinyResNet.Images(seed: 79);
        var labels = tensor(new long[] { 2, 0, 1, 1 });
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();

        Dictionary<string, Tensor> Gradients()
        {
            model.train();
            foreach (var (_, p) in trainable)
            {
                p.grad?.zero_();
            }

            nn.functional.cross_entropy(model.forward(images), labels).backward();
            return trainable.ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        }

        var before = Gradients();
        var stateBefore = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        model.eval();
        using (no_grad())
        {
            model.forward(images).Dispose();
        }

        Assert.AreEqual(6, model.Folds.Count(f => f.FoldCount == 1));
        var stateFolded = model.state_dict();
        var after = Gradients();
        var stateAfter = model.state_dict();

        // Nothing of the fold is in the model's state, in evaluation mode or after it; training sees the exact weights.
        CollectionAssert.AreEquivalent(stateBefore.Keys.ToList(), stateFolded.Keys.ToList());
        foreach (var (name, value) in stateBefore)
        {
            Assert.IsTrue(value.Equals(stateFolded[name]), $"{name} bit for bit (evaluation mode, folded)");
            Assert.IsTrue(value.Equals(stateAfter[name]), $"{name} bit for bit (training again)");
        }

        Assert.AreEqual(5 * 2 + 2, before.Count);
        foreach (var (name, grad) in before)
        {
            Assert.IsTrue(grad.Equals(after[name]), $"{name}: the same gradient bit for bit");
        }
    }

    [TestMethod]
    public void PeftSaveLoad_ConvAdapterWithHead_RoundTripsIntoFreshModel()
    {
        using var scope = NewDisposeScope();
        using var model = TinyResNet.Create(seed: 67);
        lora.inject_adapter_in_model(Config(), model);
        RandomizeLoraB(model, seed: 68);
        string dir = PeftAdapter.Save(model, TestData.NewTempDirectory());

        var keys = SafetensorsHeader(Path.Combine(dir, PeftAdapter.WeightsFileName));
        CollectionAssert.AreEqual(new long[] { 4, 8, 3, 3 }, keys["base_model.model.layer2.0.conv1.lora_A.weight"]);
        CollectionAssert.AreEqual(new long[] { 16, 4, 1, 1 }, keys["base_model.model.layer2.0.conv1.lora_B.weight"]);
        CollectionAssert.AreEqual(new long[] { 4, 3, 3, 3 }, keys["base_model.model.conv1.lora_A.weight"]);
        CollectionAssert.AreEqual(new long[] { 3, 16 }, keys["base_model.model.fc.weight"]);
        Assert.AreEqual(5 * 2 + 2, keys.Count, string.Join(", ", keys.Keys));

        // A fresh model with the same base but another head initialisation: loading the adapter makes it compute the same.
        using var fresh = TinyResNet.Create(seed: 67);
        torch.manual_seed(99);
        using (no_grad())
        {
            foreach (var p in fresh.named_parameters().Where(p => p.name.StartsWith("fc.", StringComparison.Ordinal)))
            {
                p.parameter.normal_();
            }
        }

        var images = TinyResNet.Images(seed: 69);
        model.eval();
        using var noGrad = no_grad();
        var expected = model.forward(images);
        Assert.IsGreaterThan(1e-3, TestData.MaxAbsDiff(expected, fresh.forward(images)), "differs before loading");
        var loaded = PeftAdapter.Load(fresh, dir);
        Assert.AreEqual(5, loaded.Count);
        fresh.eval();
        Assert.IsLessThan(1e-6, TestData.MaxAbsDiff(expected, fresh.forward(images)));
    }

    private static Dictionary<string, long[]> SafetensorsHeader(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        long length = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        using var json = JsonDocument.Parse(bytes.AsMemory(8, (int)length));
        return json.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__")
            .ToDictionary(p => p.Name, p => p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray());
    }
}
