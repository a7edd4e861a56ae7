using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class ConvTests
{
    [TestMethod]
    public void Conv2d_GroupsOne_UsesPeftShapesAndPeftDeltaWeight()
    {
        torch.manual_seed(50);
        using var scope = NewDisposeScope();
        var layer = lora.Conv2d(3, 5, 3, r: 4, lora_alpha: 8, padding: 1);
        CollectionAssert.AreEqual(new long[] { 4, 3, 3, 3 }, layer.lora_A!.shape, "PEFT lora_A.weight: r × in × k × k");
        CollectionAssert.AreEqual(new long[] { 5, 4, 1, 1 }, layer.lora_B!.shape, "PEFT lora_B.weight: out × r × 1 × 1");
        Randomize(layer.lora_B);
        var before = layer.weight.detach().clone();

        // PEFT's get_delta_weight for k > 1: conv(A transposed to (in, r, k, k), B) transposed back, times scaling.
        var peftDelta = nn.functional.conv2d(layer.lora_A.detach().transpose(0, 1), layer.lora_B.detach()).transpose(0, 1) * layer.scaling;
        layer.merge();
        Assert.IsTrue(MaxRelativeDifference(layer.weight - before, peftDelta) <= 1e-5);
    }

    [TestMethod]
    public void Conv1d_Groups_MergedAgreesAndLoraFactorsAreBlockDiagonal()
    {
        torch.manual_seed(51);
        using var scope = NewDisposeScope();
        var layer = lora.Conv1d(8, 4, 3, r: 4, lora_alpha: 4, groups: 4);
        CollectionAssert.AreEqual(new long[] { 4, 2, 3 }, layer.lora_A!.shape, "A: r × in/groups × k");
        CollectionAssert.AreEqual(new long[] { 4, 1, 1 }, layer.lora_B!.shape, "B: out × r/groups × 1");
        Randomize(layer.lora_B);
        var x = randn(2, 8, 10);
        var unmerged = layer.forward(x).detach();
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), unmerged) <= 1e-5);
    }

    [TestMethod]
    public void Conv_RankNotDivisibleByGroups_ThrowsNamingR()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.Conv2d(4, 4, 3, r: 3, groups: 2));
        Assert.AreEqual("r", e.ParamName);
    }

    [TestMethod]
    public void Conv_InChannelsNotDivisibleByGroups_ThrowsNamingIt()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.Conv3d(3, 4, 1, r: 2, groups: 2));
        Assert.AreEqual("in_channels", e.ParamName);
    }

    [TestMethod]
    [DataRow(-1, 1.0, 0.0, "r")]
    [DataRow(2, 0.0, 0.0, "lora_alpha")]
    [DataRow(2, 1.0, 1.5, "lora_dropout")]
    public void Conv1d_BadArgument_ThrowsNamingIt(int r, double alpha, double dropout, string name)
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => lora.Conv1d(2, 2, 1, r: r, lora_alpha: alpha, lora_dropout: dropout));
        Assert.AreEqual(name, e.ParamName);
    }

    [TestMethod]
    public void Conv2d_RectangularKernel_MatchesTorchSharpConvAndMerges()
    {
        torch.manual_seed(52);
        using var scope = NewDisposeScope();
        var layer = lora.Conv2d(2, 4, (3, 1), r: 2, lora_alpha: 2, stride: (2, 1), padding: (1, 0), dilation: (1, 2));
        CollectionAssert.AreEqual(new long[] { 2, 2, 3, 1 }, layer.lora_A!.shape);
        var plain = nn.Conv2d(2, 4, (3, 1), stride: (2, 1), padding: (1, 0), dilation: (1, 2));
        using (no_grad())
        {
            plain.weight.copy_(layer.weight);
            plain.bias!.copy_(layer.bias!);
        }

        var x = randn(1, 2, 7, 5);
        AssertExactlyEqual(layer.forward(x), plain.forward(x), "B = 0");
        Randomize(layer.lora_B);
        var unmerged = layer.forward(x).detach();
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), unmerged) <= 1e-5);
    }

    [TestMethod]
    public void Conv3d_CuboidKernel_MergedAgrees()
    {
        torch.manual_seed(53);
        using var scope = NewDisposeScope();
        var layer = lora.Conv3d(2, 2, (1, 2, 3), r: 2, lora_alpha: 2, padding: (0, 1, 1));
        Randomize(layer.lora_B);
        var x = randn([1, 2, 3, 4, 5]);
        var unmerged = layer.forward(x).detach();
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), unmerged) <= 1e-5);
    }
}
