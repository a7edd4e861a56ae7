using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class LinearTests
{
    [TestMethod]
    public void Linear_ZeroB_OutputEqualsPlainLinearExactly()
    {
        torch.manual_seed(1);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(6, 5, r: 3, lora_alpha: 6);
        var plain = nn.Linear(6, 5);
        using (no_grad())
        {
            plain.weight.copy_(layer.weight);
            plain.bias!.copy_(layer.bias!);
        }

        var x = randn(4, 6);
        AssertExactlyEqual(layer.forward(x), plain.forward(x), "train-mode output with B = 0");
        layer.eval();
        AssertExactlyEqual(layer.forward(x), plain.forward(x), "eval-mode output with B = 0");
    }

    [TestMethod]
    public void Linear_RankZero_IsPlainLayerWithoutFactors()
    {
        using var layer = lora.Linear(4, 3);
        Assert.AreEqual(0, layer.r);
        Assert.IsNull(layer.lora_A);
        CollectionAssert.AreEquivalent(new[] { "weight", "bias" }, layer.state_dict().Keys.ToArray());
        Assert.IsTrue(layer.weight.requires_grad, "r = 0 leaves the weight trainable, as loralib");
    }

    [TestMethod]
    public void Linear_MergedAndUnmerged_AgreeWithin1e5Relative()
    {
        torch.manual_seed(2);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(16, 12, r: 4, lora_alpha: 8);
        Randomize(layer.lora_B);
        var x = randn(5, 16);
        var unmerged = layer.forward(x).detach();
        layer.eval();
        Assert.IsTrue(layer.merged);
        var merged = layer.forward(x);
        // float32 with different summation order: a few ulps of the output scale.
        Assert.IsTrue(MaxRelativeDifference(merged, unmerged) <= 1e-5, $"rel diff {MaxRelativeDifference(merged, unmerged)}");
        layer.merge();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), unmerged) <= 1e-5, "merge() is idempotent");
    }

    [TestMethod]
    [DataRow("none", false)]
    [DataRow("all", true)]
    [DataRow("lora_only", true)]
    public void Linear_BackwardAfterMarkOnlyLora_GradientsReachOnlyFactorsAndChosenBias(string bias, bool biasTrains)
    {
        torch.manual_seed(3);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(8, 6, r: 2, lora_alpha: 2);
        Randomize(layer.lora_B);
        lora.mark_only_lora_as_trainable(layer, bias);
        layer.forward(randn(3, 8)).square().sum().backward();
        Assert.IsNull(layer.weight.grad, "frozen weight gets no gradient");
        Assert.IsTrue(layer.lora_A!.grad!.abs().sum().item<float>() > 0, "A gets a gradient");
        Assert.IsTrue(layer.lora_B!.grad!.abs().sum().item<float>() > 0, "B gets a gradient");
        Assert.AreEqual(biasTrains, layer.bias!.grad is not null, $"bias gradient with bias = {bias}");
    }

    [TestMethod]
    public void Linear_HundredTrainEvalCycles_WeightStaysWithin1e6()
    {
        torch.manual_seed(4);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(32, 32, r: 8, lora_alpha: 16);
        Randomize(layer.lora_B);
        var original = layer.weight.detach().clone();
        for (var i = 0; i < 100; i++)
        {
            layer.eval();
            layer.train();
        }

        Assert.IsFalse(layer.merged);
        // Each cycle adds and subtracts the same float32 ΔW: at most a rounding step per cycle.
        Assert.IsTrue(MaxAbsoluteDifference(layer.weight, original) <= 1e-6, $"drift {MaxAbsoluteDifference(layer.weight, original)}");
    }

    [TestMethod]
    public void Linear_StateDictRoundTripThroughStream_ReproducesOutputs()
    {
        torch.manual_seed(5);
        using var scope = NewDisposeScope();
        var source = lora.Linear(7, 5, r: 2, lora_alpha: 4);
        Randomize(source.lora_B);
        var target = lora.Linear(7, 5, r: 2, lora_alpha: 4);
        var saved = new MemoryStream();
        source.save(saved); // TorchSharp closes the stream it wrote
        using var stream = new MemoryStream(saved.ToArray());
        target.load(stream);
        var x = randn(3, 7);
        AssertExactlyEqual(target.forward(x), source.forward(x), "round-tripped layer");
        CollectionAssert.AreEquivalent(new[] { "weight", "bias", "lora_A", "lora_B" }, target.state_dict().Keys.ToArray());
    }

    [TestMethod]
    public void Linear_LoraWeightsLoadedIntoMergedLayer_SameModelAsLoadedUnmerged()
    {
        // loralib #190: loading adapter weights after eval() left the old ΔW in the weight.
        torch.manual_seed(6);
        using var scope = NewDisposeScope();
        var trained = lora.Linear(10, 8, r: 4, lora_alpha: 8);
        Randomize(trained.lora_B);
        var adapter = lora.lora_state_dict(trained);

        var mergedFirst = lora.Linear(10, 8, r: 4, lora_alpha: 8);
        var unmergedFirst = lora.Linear(10, 8, r: 4, lora_alpha: 8);
        foreach (var layer in new[] { mergedFirst, unmergedFirst })
        {
            using var noGrad = no_grad();
            layer.weight.copy_(trained.weight);
            layer.bias!.copy_(trained.bias!);
            Randomize(layer.lora_B); // some other adapter is already there
        }

        mergedFirst.eval();
        mergedFirst.load_state_dict(adapter, strict: false);
        unmergedFirst.load_state_dict(adapter, strict: false);
        unmergedFirst.eval();
        trained.eval();

        var x = randn(4, 10);
        var expected = trained.forward(x);
        Assert.IsTrue(MaxRelativeDifference(mergedFirst.forward(x), expected) <= 1e-5, "load after merge");
        Assert.IsTrue(MaxRelativeDifference(unmergedFirst.forward(x), expected) <= 1e-5, "load before merge");
        mergedFirst.train();
        unmergedFirst.train();
        Assert.IsTrue(MaxAbsoluteDifference(mergedFirst.weight, unmergedFirst.weight) <= 1e-6, "both unmerge to the base weight");
    }

    [TestMethod]
    public void Linear_FanInFanOut_StoresWeightTransposedAndMatchesMatmul()
    {
        torch.manual_seed(7);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(6, 4, r: 2, lora_alpha: 2, fan_in_fan_out: true);
        CollectionAssert.AreEqual(new long[] { 6, 4 }, layer.weight.shape);
        Randomize(layer.lora_B);
        var x = randn(3, 6);
        var expected = x.matmul(layer.weight) + layer.bias! + x.matmul(layer.lora_A!.t()).matmul(layer.lora_B!.t()) * layer.scaling;
        var actual = layer.forward(x).detach();
        Assert.IsTrue(MaxRelativeDifference(actual, expected) <= 1e-5);
        layer.eval();
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), expected) <= 1e-5, "merged fan_in_fan_out");
    }

    [TestMethod]
    public void Linear_RsLora_ScalesByAlphaOverSqrtR()
    {
        torch.manual_seed(8);
        using var scope = NewDisposeScope();
        var standard = lora.Linear(5, 5, r: 16, lora_alpha: 8);
        var rs = lora.Linear(5, 5, r: 16, lora_alpha: 8, use_rslora: true);
        Assert.AreEqual(0.5, standard.scaling, 1e-12);
        Assert.AreEqual(2.0, rs.scaling, 1e-12);
        Randomize(rs.lora_B);
        var x = randn(2, 5);
        var expected = x.matmul(rs.weight.t()) + rs.bias! + x.matmul(rs.lora_A!.t()).matmul(rs.lora_B!.t()) * 2.0;
        Assert.IsTrue(MaxRelativeDifference(rs.forward(x).detach(), expected) <= 1e-5);
    }

    [TestMethod]
    public void Linear_Dropout_AppliesInTrainingOnlyAndOnlyToLoraBranch()
    {
        torch.manual_seed(9);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(64, 8, r: 4, lora_alpha: 4, lora_dropout: 0.5, merge_weights: false);
        var x = randn(16, 64);
        var baseOnly = nn.functional.linear(x, layer.weight, layer.bias);
        // B = 0: whatever dropout does on the branch, the base path is untouched.
        AssertExactlyEqual(layer.forward(x), baseOnly, "dropout never touches the base path");
        Randomize(layer.lora_B);
        var noDropout = baseOnly + x.matmul(layer.lora_A!.t()).matmul(layer.lora_B!.t()) * layer.scaling;
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x).detach(), noDropout) > 1e-3, "training forward drops branch inputs");
        layer.eval();
        Assert.IsFalse(layer.merged, "merge_weights = false keeps the branch");
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), noDropout) <= 1e-5, "eval forward has no dropout");
    }

    [TestMethod]
    public void Linear_HalfPrecisionBase_MergesDeltaComputedInFloat32()
    {
        torch.manual_seed(10);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(8, 8, r: 2, lora_alpha: 4, dtype: ScalarType.Float16);
        Assert.AreEqual(ScalarType.Float16, layer.weight.dtype);
        Assert.AreEqual(ScalarType.Float32, layer.lora_A!.dtype, "factors stay float32 for a half base");
        Randomize(layer.lora_B);
        var expected = (layer.weight.to(ScalarType.Float32) + layer.lora_B!.matmul(layer.lora_A).mul(layer.scaling)).to(ScalarType.Float16);
        layer.merge();
        AssertExactlyEqual(layer.weight, expected, "half weight after merge = round(W + ΔW computed in float32)");
    }

    [TestMethod]
    [DataRow(-1, 1.0, 0.0, "r")]
    [DataRow(2, 0.0, 0.0, "lora_alpha")]
    [DataRow(2, -3.0, 0.0, "lora_alpha")]
    [DataRow(2, 1.0, 1.0, "lora_dropout")]
    [DataRow(2, 1.0, -0.1, "lora_dropout")]
    public void Linear_BadArgument_ThrowsNamingIt(int r, double alpha, double dropout, string expectedName)
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => lora.Linear(4, 4, r: r, lora_alpha: alpha, lora_dropout: dropout));
        Assert.AreEqual(expectedName, e.ParamName);
    }

    [TestMethod]
    public void Linear_UnknownInit_ThrowsNamingIt()
    {
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.Linear(4, 4, r: 2, init_lora_weights: "pissa"));
        Assert.AreEqual("init_lora_weights", e.ParamName);
    }

    [TestMethod]
    public void Linear_GaussianInit_AHasStd1OverRAndBIsZero()
    {
        torch.manual_seed(11);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(2000, 4, r: 4, init_lora_weights: "gaussian");
        // 8000 samples of N(0, 1/4): the sample std is within 3% of 0.25 with overwhelming probability.
        Assert.AreEqual(0.25, layer.lora_A!.std().item<float>(), 0.25 * 0.03);
        Assert.AreEqual(0f, layer.lora_B!.abs().max().item<float>());
    }

    [TestMethod]
    public void Linear_FactorOfWrongShape_ThrowsNamingIt()
    {
        using var scope = NewDisposeScope();
        var layer = lora.Linear(4, 3, r: 2);
        var e = Assert.ThrowsExactly<ArgumentException>(() => layer.lora_A = new TorchSharp.Modules.Parameter(zeros(3, 4)));
        Assert.AreEqual("lora_A", e.ParamName);
        StringAssert.Contains(e.Message, "[2, 4]");
        var w = Assert.ThrowsExactly<ArgumentException>(() => layer.weight = new TorchSharp.Modules.Parameter(zeros(4, 3)));
        Assert.AreEqual("weight", w.ParamName);
    }
}
