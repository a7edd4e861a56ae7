using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class InjectionLayerKindsTests
{
    [TestMethod]
    public void Inject_Convolutions_ForwardUnchangedThenMergedAgrees()
    {
        torch.manual_seed(70);
        using var scope = NewDisposeScope();
        var model = new ConvNet();
        var x = randn(2, 3, 6, 6);
        var before = model.forward(x).detach();
        var replaced = lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["conv1", "conv2", "temporal"] }, model);
        CollectionAssert.AreEqual(new[] { "conv1", "conv2", "temporal" }, replaced.ToArray());
        Assert.IsInstanceOfType<Modules.Conv2d>(model.Conv2);
        Assert.AreEqual(2L, ((Modules.Conv2d)model.Conv2).groups);
        AssertExactlyEqual(model.forward(x), before, "B = 0");

        foreach (var layer in model.modules().OfType<Modules.LoraLayer>())
        {
            Randomize(layer.lora_B);
        }

        var unmerged = model.forward(x).detach();
        model.eval();
        Assert.IsTrue(model.modules().OfType<ILoraLayer>().All(l => l.merged), "eval() reaches injected layers");
        Assert.IsTrue(MaxRelativeDifference(model.forward(x), unmerged) <= 1e-5);
    }

    [TestMethod]
    public void Inject_ReflectPaddedConv_ThrowsNamingTheModule()
    {
        using var scope = NewDisposeScope();
        var model = new ConvNet();
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.inject_adapter_in_model(new LoraConfig { target_modules = ["reflect"] }, model));
        StringAssert.Contains(e.Message, "reflect");
    }

    [TestMethod]
    public void Inject_Embedding_TakesOverTableAndForwardIsUnchanged()
    {
        torch.manual_seed(71);
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var ids = tensor(new long[] { 1, 5, 7, 2 }, 1, 4);
        var before = model.forward(ids).detach();
        var replaced = lora.inject_adapter_in_model(new LoraConfig { r = 4, target_modules = ["word_embeddings"] }, model);
        CollectionAssert.AreEqual(new[] { "word_embeddings" }, replaced.ToArray());
        var layer = model.named_modules().Single(m => m.name == "word_embeddings").module as Modules.Embedding;
        Assert.IsNotNull(layer);
        CollectionAssert.AreEqual(new long[] { 4, 20 }, layer.lora_A!.shape);
        AssertExactlyEqual(model.forward(ids), before, "A = 0");
        Assert.IsTrue(model.state_dict().ContainsKey("word_embeddings.lora_B"));
    }

    [TestMethod]
    public void Inject_RankNotDivisibleByConvGroups_ThrowsBeforeChangingAnything()
    {
        using var scope = NewDisposeScope();
        var model = new ConvNet();
        var e = Assert.ThrowsExactly<ArgumentException>(
            () => lora.inject_adapter_in_model(new LoraConfig { r = 3, target_modules = ["conv1", "conv2"] }, model));
        StringAssert.Contains(e.Message, "conv2");
        Assert.IsFalse(model.modules().Any(m => m is ILoraLayer), "conv1 was not swapped either");
        Assert.IsTrue(model.parameters().All(p => p.requires_grad), "no parameter was frozen");
    }
}
