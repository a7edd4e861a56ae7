using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class ConvTests
{
    [TestMethod]
    public void Conv2d_PeftFactorization_UsesPeftShapesAndPeftDeltaWeight()
    {
        torch.manual_seed(50);
        using var scope = NewDisposeScope();
        var layer = lora.Conv2d(3, 5, 3, r: 4, lora_alpha: 8, padding: 1, factorization: LoraConvFactorization.Peft);
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
    public void Conv1d_PeftGroups_MergedAgreesAndLoraFactorsAreBlockDiagonal()
    {
        torch.manual_seed(51);
        using var scope = NewDisposeScope();
        const int groups = 4;
        var layer = lora.Conv1d(8, 8, 3, r: 4, lora_alpha: 4, groups: groups, factorization: LoraConvFactorization.Peft);
        CollectionAssert.AreEqual(new long[] { 4, 2, 3 }, layer.lora_A!.shape, "A: r × in/groups × k");
        CollectionAssert.AreEqual(new long[] { 8, 1, 1 }, layer.lora_B!.shape, "B: out × r/groups × 1");
        Randomize(layer.lora_B);

        // Independent ΔW, one block per group g: out channels 2g, 2g+1 get B_g (2 × 1) · A_g (1 × 2·3), A_g = A's row g
        // (over in channels 2g, 2g+1); no block reaches another group's input channels.
        var a = layer.lora_A.detach().to(ScalarType.Float64);
        var b = layer.lora_B.detach().to(ScalarType.Float64);
        var delta = zeros(8, 2, 3, dtype: ScalarType.Float64);
        for (int g = 0; g < groups; g++)
        {
            var bG = b[(2 * g)..(2 * g + 2), .., 0];                  // (2 × 1)
            var aG = a[g..(g + 1)].reshape(1, 2 * 3);                    // (1 × 6)
            delta[(2 * g)..(2 * g + 2)] = bG.matmul(aG).reshape(2, 2, 3) * layer.scaling;
        }

        var x = randn(2, 8, 10);
        var w = layer.weight.detach().to(ScalarType.Float64);
        var bias = layer.bias!.detach().to(ScalarType.Float64);
        var expected = nn.functional.conv1d(x.to(ScalarType.Float64), w + delta, bias, groups: groups);
        var unmerged = layer.forward(x).detach();
        Assert.IsTrue(MaxRelativeDifference(unmerged, expected) <= 1e-5, "unmerged = grouped conv with the block ΔW");

        // Block structure of the update itself: changing the input channels of group 1 (channels 2, 3) changes only
        // output channels 2 and 3 of the adapter's contribution (the base conv is grouped too).
        var x2 = x.clone();
        x2[.., 2..4] += randn(2, 2, 10);
        var change = (layer.forward(x2) - unmerged).detach().abs().amax([0, 2]);
        Assert.AreEqual(0.0, change[..2].max().item<float>(), 0.0, "groups 0: untouched");
        Assert.AreEqual(0.0, change[4..].max().item<float>(), 0.0, "groups 2, 3: untouched");
        Assert.IsGreaterThan(1e-3, change[2..4].min().item<float>(), "group 1 changes");

        var before = layer.weight.detach().clone();
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.weight.detach() - before, delta) <= 1e-5, "merge adds the block ΔW");
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), unmerged) <= 1e-5);
    }

    [TestMethod]
    public void Conv_PeftRankNotDivisibleByGroups_ThrowsNamingR()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.Conv2d(4, 4, 3, r: 3, groups: 2, factorization: LoraConvFactorization.Peft));
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
    public void Conv2d_PeftRectangularKernel_MatchesTorchSharpConvAndMerges()
    {
        torch.manual_seed(52);
        using var scope = NewDisposeScope();
        var layer = lora.Conv2d(2, 4, (3, 1), r: 2, lora_alpha: 2, stride: (2, 1), padding: (1, 0), dilation: (1, 2), factorization: LoraConvFactorization.Peft);
        CollectionAssert.AreEqual(new long[] { 2, 2, 3, 1 }, layer.lora_A!.shape);
        var plain = nn.Conv2d(2, 4, (3, 1), stride: (2, 1), padding: (1, 0), dilation: (1, 2));
        using (no_grad())
        {
            plain.weight.copy_(layer.weight);
            plain.bias!.copy_(layer.bias!);
        }

        CollectionAssert.AreEqual(new long[] { 4, 2, 1, 1 }, layer.lora_B!.shape, "B: out × r × 1 × 1");
        var x = randn(1, 2, 7, 5);
        AssertExactlyEqual(layer.forward(x), plain.forward(x), "B = 0");
        Randomize(layer.lora_B);
        var unmerged = layer.forward(x).detach();

        // PEFT's two-convolution forward, written out: A with the base's stride, padding and dilation, then B as 1×1.
        var down = nn.functional.conv2d(x, layer.lora_A.detach(), null, [2, 1], [1, 0], [1, 2]);
        var expected = plain.forward(x) + nn.functional.conv2d(down, layer.lora_B.detach()) * layer.scaling;
        Assert.IsTrue(MaxRelativeDifference(unmerged, expected) <= 1e-5, "conv(x, W) + conv1x1(conv(x, A), B)·scaling");

        // Merged ΔW[o, i, kh, kw] = Σ_r B[o, r]·A[r, i, kh, kw]·scaling.
        var delta = einsum("or,rihw->oihw", layer.lora_B.detach()[.., .., 0, 0], layer.lora_A.detach()) * layer.scaling;
        var before = layer.weight.detach().clone();
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.weight.detach() - before, delta) <= 1e-5, "merged ΔW");
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), unmerged) <= 1e-5);
    }

    [TestMethod]
    public void Conv3d_CuboidKernel_LoralibLayoutAndDeltaWeight()
    {
        torch.manual_seed(53);
        using var scope = NewDisposeScope();
        var layer = lora.Conv3d(2, 2, (1, 2, 3), r: 2, lora_alpha: 2, padding: (0, 1, 1));

        // loralib's layout with the first kernel dimension as k (k₀ = 1): A [r·k₀, in·k₁·k₂], B [out/groups·k₀, r·k₀].
        CollectionAssert.AreEqual(new long[] { 2, 2 * 2 * 3 }, layer.lora_A!.shape, "r·k₀ × in·k₁·k₂");
        CollectionAssert.AreEqual(new long[] { 2, 2 }, layer.lora_B!.shape, "out·k₀ × r·k₀");
        Randomize(layer.lora_B);
        var x = randn([1, 2, 3, 4, 5]);
        var unmerged = layer.forward(x).detach();

        // ΔW = (B·A).view(W.shape)·α/r (α/r = 1), applied in one float64 conv3d as loralib does.
        var delta = layer.lora_B.detach().to(ScalarType.Float64).matmul(layer.lora_A.detach().to(ScalarType.Float64)).view(2, 2, 1, 2, 3);
        var expected = nn.functional.conv3d(x.to(ScalarType.Float64), layer.weight.detach().to(ScalarType.Float64) + delta,
            layer.bias!.detach().to(ScalarType.Float64), padding: [0, 1, 1]);
        Assert.IsTrue(MaxRelativeDifference(unmerged, expected) <= 1e-5, "unmerged = conv3d(x, W + (B·A).view(W.shape))");
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), unmerged) <= 1e-5);
    }

    [TestMethod]
    public void Conv2d_Default_UsesLoralibShapesAndReshapedDeltaWeight()
    {
        torch.manual_seed(54);
        using var scope = NewDisposeScope();
        var layer = lora.Conv2d(3, 6, 3, r: 2, lora_alpha: 4, padding: 1, groups: 3);
        Assert.AreEqual(LoraConvFactorization.Loralib, layer.factorization);
        CollectionAssert.AreEqual(new long[] { 2 * 3, 3 * 3 }, layer.lora_A!.shape, "loralib lora_A: r·k × in·k");
        CollectionAssert.AreEqual(new long[] { 6 / 3 * 3, 2 * 3 }, layer.lora_B!.shape, "loralib lora_B: out/groups·k × r·k");
        Randomize(layer.lora_B);
        var before = layer.weight.detach().clone();
        var expected = layer.lora_B.detach().matmul(layer.lora_A.detach()).view(layer.weight.shape) * 2.0; // α/r = 2
        layer.merge();
        Assert.IsTrue(MaxRelativeDifference(layer.weight - before, expected) <= 1e-6);
    }

    [TestMethod]
    public void Conv2d_LoralibCheckpointWithDuplicatedConvKeys_LoadsStrictAndGivesLoralibOutput()
    {
        torch.manual_seed(55);
        using var scope = NewDisposeScope();
        var w = randn(4, 2, 3, 3) * 0.3;
        var b = randn(4) * 0.1;
        var a = randn(2 * 3, 2 * 3) * 0.3;
        var bB = randn(4 * 3, 2 * 3) * 0.3;
        // loralib's ConvLoRA registers its inner conv's tensors twice: weight/bias and conv.weight/conv.bias.
        var checkpoint = new Dictionary<string, Tensor>
        {
            ["weight"] = w, ["bias"] = b, ["lora_A"] = a, ["lora_B"] = bB, ["conv.weight"] = w.clone(), ["conv.bias"] = b.clone(),
        };
        var layer = lora.Conv2d(2, 4, 3, r: 2, lora_alpha: 3, padding: 1);
        var (missing, unexpected) = layer.load_state_dict(checkpoint);
        Assert.AreEqual(0, missing.Count + unexpected.Count);

        var x = randn(2, 2, 5, 5);
        var loralib = nn.functional.conv2d(x, w + bB.matmul(a).view(4, 2, 3, 3) * 1.5, b, padding: [1, 1]);
        // 1e-5 relative: conv(x, W) + conv(x, ΔW) against loralib's conv(x, W + ΔW), float32 sums in different orders.
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), loralib) <= 1e-5, "unmerged");
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), loralib) <= 1e-5, "merged");
    }

    [TestMethod]
    public void Conv2d_LoralibCheckpointWhoseDuplicatesDiffer_ThrowsNamingSource()
    {
        using var scope = NewDisposeScope();
        var layer = lora.Conv2d(2, 4, 3, r: 2);
        var state = layer.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        state["conv.weight"] = state["weight"] + 1;
        var e = Assert.ThrowsExactly<ArgumentException>(() => layer.load_state_dict(state));
        Assert.AreEqual("source", e.ParamName);
    }

    [TestMethod]
    [DataRow(1)]
    [DataRow(3)]
    public void Conv1d_Default_GeneralisesLoralibLayoutAndMergesExactly(int kernel)
    {
        torch.manual_seed(56);
        using var scope = NewDisposeScope();
        var layer = lora.Conv1d(4, 6, kernel, r: 2, lora_alpha: 2, groups: 2);
        CollectionAssert.AreEqual(new long[] { 2 * kernel, 4 }, layer.lora_A!.shape, "r·k × in (loralib's shape for k = 1)");
        CollectionAssert.AreEqual(new long[] { 6 / 2 * kernel, 2 * kernel }, layer.lora_B!.shape, "out/groups·k × r·k");
        Randomize(layer.lora_B);
        var x = randn(2, 4, 9);
        var expected = nn.functional.conv1d(x, layer.weight + layer.lora_B.matmul(layer.lora_A).view(layer.weight.shape), layer.bias, groups: 2);
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), expected) <= 1e-5, "unmerged");
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), expected) <= 1e-5, "merged");
    }

    [TestMethod]
    public void Conv_InjectedIntoConvolutions_UsesPeftFactorization()
    {
        using var scope = NewDisposeScope();
        var model = nn.Sequential(("c", nn.Conv2d(2, 4, 3)));
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["c"] }, model);
        var layer = (Modules.Conv2d)model.named_modules().Single(m => m.name == "c").module;
        Assert.AreEqual(LoraConvFactorization.Peft, layer.factorization);
        CollectionAssert.AreEqual(new long[] { 2, 2, 3, 3 }, layer.lora_A!.shape);
    }

    [TestMethod]
    public void LoadLoralibStateDict_ModelWithLoralibConv_FoldsDuplicatedConvKeysAndLoadsStrict()
    {
        torch.manual_seed(57);
        using var scope = NewDisposeScope();
        var source = nn.Sequential(("features", lora.Conv2d(2, 4, 3, r: 2, lora_alpha: 2, padding: 1)));
        var conv = (Modules.Conv2d)source.named_modules().Single(m => m.name == "features").module;
        Randomize(conv.lora_B);
        // What loralib's model.state_dict() holds: our keys plus features.conv.weight/bias (the same tensors).
        var loralib = source.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        loralib["features.conv.weight"] = loralib["features.weight"].clone();
        loralib["features.conv.bias"] = loralib["features.bias"].clone();

        var target = nn.Sequential(("features", lora.Conv2d(2, 4, 3, r: 2, lora_alpha: 2, padding: 1)));
        var (missing, unexpected) = lora.load_loralib_state_dict(target, loralib);
        Assert.AreEqual(0, missing.Count + unexpected.Count);
        var x = randn(1, 2, 5, 5);
        AssertExactlyEqual(target.forward(x), source.forward(x), "loaded model");
    }

    [TestMethod]
    public void PeftAdapterSave_LoralibFactorisedConv_ThrowsNamingTheLayerAndFactorisation()
    {
        using var scope = NewDisposeScope();
        var model = nn.Sequential(("c", lora.Conv2d(2, 4, 3, r: 2)));
        var dir = PeftFiles.TempDir();
        try
        {
            var e = Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Save(model, dir));
            StringAssert.Contains(e.Message, "'c'");
            StringAssert.Contains(e.Message, "loralib's factorisation");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void LoralibStateDict_ModelWithLoralibConv_AddsConvDuplicatesAndRoundTrips()
    {
        torch.manual_seed(58);
        using var scope = NewDisposeScope();
        var source = nn.Sequential(("features", lora.Conv2d(2, 4, 3, r: 2, lora_alpha: 2, padding: 1)), ("head", lora.Linear(4, 3, r: 1)));
        var state = lora.loralib_state_dict(source);
        CollectionAssert.AreEquivalent(
            new[] { "features.weight", "features.bias", "features.lora_A", "features.lora_B", "features.conv.weight", "features.conv.bias",
                "head.weight", "head.bias", "head.lora_A", "head.lora_B" },
            state.Keys.ToArray());
        Assert.AreSame(state["features.weight"], state["features.conv.weight"], "the same tensor, as in loralib");

        var target = nn.Sequential(("features", lora.Conv2d(2, 4, 3, r: 2, lora_alpha: 2, padding: 1)), ("head", lora.Linear(4, 3, r: 1)));
        var (missing, unexpected) = lora.load_loralib_state_dict(target, state);
        Assert.AreEqual(0, missing.Count + unexpected.Count);
        AssertExactlyEqual(target.state_dict()["features.weight"], source.state_dict()["features.weight"], "weight");
    }
}
