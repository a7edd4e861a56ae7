using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class EmbeddingTests
{
    [TestMethod]
    public void Embedding_Init_AZerosBNormalAndLoralibShapes()
    {
        torch.manual_seed(60);
        using var scope = NewDisposeScope();
        var layer = lora.Embedding(30, 5, r: 3, lora_alpha: 6);
        CollectionAssert.AreEqual(new long[] { 3, 30 }, layer.lora_A!.shape);
        CollectionAssert.AreEqual(new long[] { 5, 3 }, layer.lora_B!.shape);
        Assert.AreEqual(0f, layer.lora_A.abs().max().item<float>());
        Assert.IsTrue(layer.lora_B.abs().max().item<float>() > 0);
        Assert.AreEqual(2.0, layer.scaling, 1e-12);
    }

    [TestMethod]
    public void Embedding_Forward_IsRowOfWPlusScaledRowOfBATransposed()
    {
        torch.manual_seed(61);
        using var scope = NewDisposeScope();
        var layer = lora.Embedding(12, 4, r: 2, lora_alpha: 4);
        Randomize(layer.lora_A);
        var ids = tensor(new long[] { 3, 11, 0 });
        var delta = layer.lora_B!.matmul(layer.lora_A!).t() * layer.scaling; // (12 × 4)
        var expected = layer.weight.index_select(0, ids) + delta.index_select(0, ids);
        Assert.IsTrue(MaxRelativeDifference(layer.forward(ids).detach(), expected) <= 1e-5);
    }

    [TestMethod]
    public void Embedding_PaddingIdx_RowStartsAtZeroAndItsAColumnGetsNoGradient()
    {
        torch.manual_seed(62);
        using var scope = NewDisposeScope();
        var layer = lora.Embedding(8, 4, r: 2, padding_idx: 1);
        Assert.AreEqual(0f, layer.weight[1].abs().max().item<float>());
        Randomize(layer.lora_A);
        layer.forward(tensor(new long[] { 1, 2, 1, 5 })).square().sum().backward();
        var grad = layer.lora_A!.grad!;
        Assert.AreEqual(0f, grad[.., 1].abs().max().item<float>(), "padding column");
        Assert.IsTrue(grad[.., 2].abs().max().item<float>() > 0, "other used columns train");
    }

    [TestMethod]
    public void Embedding_PaddingIdxOutOfRange_ThrowsNamingIt()
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => lora.Embedding(4, 2, r: 1, padding_idx: 4));
        Assert.AreEqual("padding_idx", e.ParamName);
    }

    [TestMethod]
    [DataRow(3L)]
    [DataRow(null)]
    public void Inject_EmbeddingWithPaddingIdx_KeepsItAndItsRowGetsNoGradient(long? padding)
    {
        torch.manual_seed(77);
        using var scope = NewDisposeScope();
        var model = nn.Sequential(("emb", padding is long p ? nn.Embedding(10, 4, padding_idx: p) : nn.Embedding(10, 4)));
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["emb"], init_lora_weights = "false" }, model);
        var layer = (Modules.Embedding)model.named_modules().Single(m => m.name == "emb").module;
        Assert.AreEqual(padding, layer.padding_idx);

        layer.forward(tensor(new long[] { 3, 1, 3, 7 })).sum().backward();
        using var columnNorms = layer.lora_A!.grad!.abs().sum(dim: 0);
        Assert.AreEqual(padding is null ? 1.0 : 0.0, columnNorms[3].item<float>() > 0 ? 1.0 : 0.0, "gradient of A's column for id 3");
        Assert.IsTrue(columnNorms[1].item<float>() > 0, "an ordinary id trains");
        Assert.IsTrue(layer.weight.grad is null, "the frozen weight gets no gradient (and the probe left none)");
    }
}
