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
    [DataRow(false)]
    [DataRow(true)]
    public void MergedLinear_TrainingForward_NeverBuildsDeltaWeight(bool fan_in_fan_out)
    {
        // loralib's MergedLinear.forward builds ΔW = B·A (out × in) and runs x·(ΔW)ᵀ. With factor entries of size 1e25
        // every entry of B·A is of order 1e50, beyond float32 (3.4e38): any [out, in] product of the factors is ±inf or
        // NaN, and so is an output computed from it. Factor by factor, x·Aᵀ (x of size 1e-25) is of order 1 and
        // (x·Aᵀ)·Bᵀ of order 1e25, finite. So a finite output equal to the float64 reference shows that training
        // forward never formed ΔW.
        torch.manual_seed(41);
        using var scope = NewDisposeScope();
        const int d = 6, r = 2;
        var qkv = lora.MergedLinear(d, 3 * d, r: r, lora_alpha: 4, enable_lora: [true, false, true], fan_in_fan_out: fan_in_fan_out);
        using (no_grad())
        {
            qkv.lora_A!.copy_(randn(2 * r, d) * 1e25);
            qkv.lora_B!.copy_(randn(2 * d, r) * 1e25);
        }

        var x = randn(2, 5, d) * 1e-25;
        var output = qkv.forward(x).detach();
        Assert.IsTrue(qkv.training, "training mode: the unmerged forward");
        Assert.IsTrue(output.isfinite().all().item<bool>(), "no inf/NaN: ΔW (order 1e50) was never formed in float32");

        // Float64 reference from the factors, group by group: y = x·Wᵀ + b + (x·A_gᵀ)·B_gᵀ·α/r on enabled groups q and v.
        var x64 = x.to(ScalarType.Float64);
        var w = (fan_in_fan_out ? qkv.weight.t() : qkv.weight).detach().to(ScalarType.Float64);
        var a = qkv.lora_A.detach().to(ScalarType.Float64);
        var b = qkv.lora_B.detach().to(ScalarType.Float64);
        var baseOut = x64.matmul(w.t()) + qkv.bias!.detach().to(ScalarType.Float64);
        var q = x64.matmul(a[..r].t()).matmul(b[..d].t()) * 2.0;
        var v = x64.matmul(a[r..].t()).matmul(b[d..].t()) * 2.0;
        var expected = baseOut + cat([q, zeros_like(q), v], -1);
        Assert.IsTrue(MaxRelativeDifference(output, expected) <= 1e-5, $"max relative difference {MaxRelativeDifference(output, expected)}");
        Assert.IsGreaterThan(1e24, output.abs().max().item<float>(), "the adapter term dominates, so the check is on it");
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
