using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class ShareWeightsTests
{
    [TestMethod]
    public void ShareWeights_TinyModel_SameKeysSameOutputsBitwise()
    {
        using var model = TestData.TinyModel(seed: 11, pooler: true);
        model.eval();
        using var shared = model.ShareWeights();
        CollectionAssert.AreEqual(
            model.state_dict().Keys.Order(StringComparer.Ordinal).ToList(),
            shared.state_dict().Keys.Order(StringComparer.Ordinal).ToList());
        Assert.IsTrue(shared.parameters().All(p => !p.requires_grad), "frozen");
        Assert.IsTrue(shared.HasPoolingLayer);

        var (ids, mask, types) = TestData.TinyBatch(seed: 12);
        using var noGrad = no_grad();
        using var expected = model.call(ids, mask, types);
        using var actual = shared.call(ids, mask, types);
        Assert.IsTrue(expected.Equals(actual), "same weights, same kernels: bitwise equal");
    }

    [TestMethod]
    public void ShareWeights_WriteThroughOneTree_SeenByTheOther()
    {
        using var model = TestData.TinyModel(seed: 13);
        using var shared = model.ShareWeights();
        using var noGrad = no_grad();
        foreach (var (name, parameter) in shared.named_parameters())
        {
            var original = model.named_parameters().Single(p => p.name == name).parameter;
            float before = original.flatten()[0].item<float>();
            parameter.flatten()[0] = torch.tensor(before + 1f);
            Assert.AreEqual(before + 1f, original.flatten()[0].item<float>(), 0f, $"{name}: one storage, no copy");
            parameter.flatten()[0] = torch.tensor(before);
        }
    }
}
