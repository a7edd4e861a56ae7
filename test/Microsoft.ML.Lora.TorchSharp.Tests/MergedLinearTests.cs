using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class MergedLinearTests
{
    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void MergedLinear_QkvWithLoraOnQAndV_EqualsSeparateLinearLayers(bool fan_in_fan_out)
    {
        torch.manual_seed(40);
        using var scope = NewDisposeScope();
        const int d = 6, r = 2;
        var qkv = lora.MergedLinear(d, 3 * d, r: r, lora_alpha: 4, enable_lora: [true, false, true], fan_in_fan_out: fan_in_fan_out);
        Randomize(qkv.lora_A);
        Randomize(qkv.lora_B);
        CollectionAssert.AreEqual(new long[] { 2 * r, d }, qkv.lora_A!.shape);
        CollectionAssert.AreEqual(new long[] { 2 * d, r }, qkv.lora_B!.shape);

        var q = lora.Linear(d, d, r: r, lora_alpha: 4);
        var k = nn.Linear(d, d);
        var v = lora.Linear(d, d, r: r, lora_alpha: 4);
        using (no_grad())
        {
            var w = fan_in_fan_out ? qkv.weight.t() : qkv.weight; // (3d × d)
            q.weight.copy_(w[..d]);
            k.weight.copy_(w[d..(2 * d)]);
            v.weight.copy_(w[(2 * d)..]);
            q.bias!.copy_(qkv.bias![..d]);
            k.bias!.copy_(qkv.bias[d..(2 * d)]);
            v.bias!.copy_(qkv.bias[(2 * d)..]);
            q.lora_A!.copy_(qkv.lora_A[..r]);
            v.lora_A!.copy_(qkv.lora_A[r..]);
            q.lora_B!.copy_(qkv.lora_B[..d]);
            v.lora_B!.copy_(qkv.lora_B[d..]);
        }

        var x = randn(2, 5, d);
        var separate = cat([q.forward(x), k.forward(x), v.forward(x)], -1).detach();
        Assert.IsTrue(MaxRelativeDifference(qkv.forward(x).detach(), separate) <= 1e-5, "training forward");
        qkv.eval();
        Assert.IsTrue(MaxRelativeDifference(qkv.forward(x), separate) <= 1e-5, "merged forward");
    }

    [TestMethod]
    public void MergedLinear_EnableLoraNotDividingOutFeatures_ThrowsNamingIt()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.MergedLinear(4, 10, r: 2, enable_lora: [true, false, true]));
        Assert.AreEqual("enable_lora", e.ParamName);
        StringAssert.Contains(e.Message, "10");
    }

    [TestMethod]
    public void MergedLinear_RankWithoutEnabledGroup_ThrowsClearError()
    {
        // loralib raises AttributeError here; the default enable_lora = [false] must not be silently accepted with r > 0.
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.MergedLinear(4, 6, r: 2));
        Assert.AreEqual("enable_lora", e.ParamName);
        using var plain = lora.MergedLinear(4, 6);
        Assert.AreEqual(0, plain.r);
    }

    [TestMethod]
    public void MergedLinear_StateDict_HasOnlyLoralibKeys()
    {
        using var layer = lora.MergedLinear(4, 6, r: 2, enable_lora: [true, false]);
        CollectionAssert.AreEquivalent(new[] { "weight", "bias", "lora_A", "lora_B" }, layer.state_dict().Keys.ToArray());
    }
}
