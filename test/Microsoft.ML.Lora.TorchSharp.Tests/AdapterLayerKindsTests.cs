using TorchSharp;
using static Microsoft.ML.Lora.Tests.TestUtil;
using static TorchSharp.torch;
using LoraLayer = Microsoft.ML.Lora.Modules.LoraLayer;
using TorchModules = TorchSharp.Modules;

namespace Microsoft.ML.Lora.Tests;

/// <summary>PEFT files and unloading for convolutions and embeddings; named adapters through <c>.to()</c>.</summary>
[TestClass]
public sealed class AdapterLayerKindsTests
{
    private static Tensor Images()
    {
        torch.manual_seed(80);
        return randn(2, 3, 4, 4);
    }

    private static ConvNet AdaptedConvNet(long seed)
    {
        torch.manual_seed(seed);
        var model = new ConvNet();
        lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 3, target_modules = ["conv1", "temporal"] }, model);
        torch.manual_seed(seed + 1);
        foreach (var (name, p) in model.named_parameters().Where(p => p.name.EndsWith("lora_B", StringComparison.Ordinal)))
        {
            Randomize(p);
        }

        return model;
    }

    [TestMethod]
    public void SaveLoad_Convolutions_PeftKernelLayoutAndSameForward()
    {
        using var scope = NewDisposeScope();
        var model = AdaptedConvNet(81);
        var expected = model.forward(Images()).detach();
        var dir = PeftFiles.TempDir();
        try
        {
            PeftAdapter.Save(model, dir);
            using (var header = PeftFiles.ReadHeader(Path.Combine(dir, "adapter_model.safetensors")))
            {
                var root = header.RootElement;
                long[] Shape(string key) => root.GetProperty(key).GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                CollectionAssert.AreEqual(new long[] { 2, 3, 3, 3 }, Shape("base_model.model.conv1.lora_A.weight"), "r × in × k × k");
                CollectionAssert.AreEqual(new long[] { 4, 2, 1, 1 }, Shape("base_model.model.conv1.lora_B.weight"), "out × r × 1 × 1");
                CollectionAssert.AreEqual(new long[] { 2, 4, 2 }, Shape("base_model.model.temporal.lora_A.weight"));
                CollectionAssert.AreEqual(new long[] { 2, 2, 1 }, Shape("base_model.model.temporal.lora_B.weight"));
            }

            torch.manual_seed(81);
            var fresh = new ConvNet();
            PeftAdapter.Load(fresh, dir, log: _ => { });
            AssertExactlyEqual(fresh.forward(Images()), expected, "conv round trip");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Save_GroupedConvolution_RefusedNamingLayer()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(82);
        var model = new ConvNet();
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["conv2"] }, model);
        var dir = PeftFiles.TempDir();
        try
        {
            var e = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Save(model, dir));
            StringAssert.Contains(e.Message, "conv2");
            Assert.IsFalse(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void MergeAndUnload_ConvAndEmbedding_PlainTorchSharpModulesSameForward()
    {
        using var scope = NewDisposeScope();
        var conv = AdaptedConvNet(83);
        var convExpected = conv.forward(Images()).detach();
        lora.merge_and_unload(conv);
        var modules = conv.named_modules().ToDictionary(m => m.name, m => m.module);
        Assert.IsInstanceOfType<TorchModules.Conv2d>(modules["conv1"]);
        Assert.IsInstanceOfType<TorchModules.Conv1d>(modules["temporal"]);
        // float32 merged kernels vs. the two-convolution branch: relative 1e-5.
        Assert.IsTrue(MaxRelativeDifference(conv.forward(Images()), convExpected) < 1e-5);

        var bert = MiniBert.Create(84);
        lora.add_adapter(bert, "emb", new LoraConfig { r = 2, lora_alpha = 2, target_modules = ["word_embeddings"] });
        var layer = (LoraLayer)bert.Module("embeddings.word_embeddings");
        using (no_grad())
        {
            nn.init.normal_(layer.get_lora_A("emb")); // A starts at zero for embeddings
        }

        var bertExpected = bert.forward(MiniBert.Ids()).detach();
        lora.merge_and_unload(bert);
        Assert.IsInstanceOfType<TorchModules.Embedding>(bert.Module("embeddings.word_embeddings"));
        Assert.IsTrue(MaxRelativeDifference(bert.forward(MiniBert.Ids()), bertExpected) < 1e-5);
    }

    [TestMethod]
    public void NamedAdapters_ToFloat64_FactorsFollowAndForwardAgrees()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(85);
        lora.add_adapter(model, "a", new LoraConfig { r = 2, target_modules = ["query"] });
        var q = (LoraLayer)model.Module("encoder.layer.0.attention.self.query");
        Randomize(q.get_lora_B("a"));
        var expected = model.forward(MiniBert.Ids()).detach().to(ScalarType.Float64);
        model.to(ScalarType.Float64);
        Assert.AreEqual(ScalarType.Float64, q.get_lora_A("a").dtype, "the factor module's fields follow .to()");
        Assert.AreEqual(ScalarType.Float64, q.get_lora_B("a").dtype);
        Assert.IsTrue(MaxRelativeDifference(model.forward(MiniBert.Ids()), expected) < 1e-5, "float64 vs float32: 1e-5");
    }
}
