using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

/// <summary>Properties every LoRA layer kind must have (Linear, Embedding, Conv1d, grouped Conv2d/Conv3d, MergedLinear).</summary>
[TestClass]
public sealed class LayerContractTests
{
    public static IEnumerable<object[]> Kinds => LayerCase.Kinds.Select(k => new object[] { k });

    public static IEnumerable<object[]> KindsWithDropout => LayerCase.Kinds.Where(k => k != "Embedding").Select(k => new object[] { k });

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_InitialFactors_OutputEqualsPlainBaseLayerExactly(string kind)
    {
        torch.manual_seed(30);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        var plain = c.PlainBase();
        var x = c.Input();
        AssertExactlyEqual(c.Layer.forward(x), plain.forward(x), $"{kind} in training mode");
        c.Layer.eval();
        AssertExactlyEqual(c.Layer.forward(x), plain.forward(x), $"{kind} merged");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_MergedAndUnmerged_AgreeWithin1e5Relative(string kind)
    {
        torch.manual_seed(31);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        var x = c.Input();
        var unmerged = c.Layer.forward(x).detach();
        Assert.IsTrue(MaxRelativeDifference(unmerged, c.PlainBase().forward(x)) > 1e-3, "the update is visible");
        c.Layer.eval();
        Assert.IsTrue(c.Layer.merged);
        // float32, different summation order: a few ulps of the output scale.
        var merged = c.Layer.forward(x);
        Assert.IsTrue(MaxRelativeDifference(merged, unmerged) <= 1e-5, $"{kind}: rel diff {MaxRelativeDifference(merged, unmerged)}");
        c.Layer.train();
        Assert.IsFalse(c.Layer.merged);
        Assert.IsTrue(MaxRelativeDifference(c.Layer.forward(x), unmerged) <= 1e-5, $"{kind}: unmerged again");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_RepeatedMergedForwards_DoNotTouchTheWeight(string kind)
    {
        torch.manual_seed(32);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        c.Layer.eval();
        var mergedWeight = c.Layer.weight.detach().clone();
        var x = c.Input();
        for (var i = 0; i < 5; i++)
        {
            c.Layer.forward(x);
        }

        AssertExactlyEqual(c.Layer.weight, mergedWeight, $"{kind}: unchanged factors are not re-merged");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_BackwardAfterMarkOnlyLora_GradientsReachOnlyFactors(string kind)
    {
        torch.manual_seed(33);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        lora.mark_only_lora_as_trainable(c.Layer);
        c.Layer.forward(c.Input()).square().sum().backward();
        foreach (var (name, p) in c.Layer.named_parameters())
        {
            var isFactor = name is "lora_A" or "lora_B";
            Assert.AreEqual(isFactor, p.grad is not null, $"{kind}.{name} gradient");
            if (isFactor)
            {
                Assert.IsTrue(p.grad!.abs().sum().item<float>() > 0, $"{kind}.{name} gradient is non-zero");
            }
        }
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_BiasAll_BiasAlsoGetsGradient(string kind)
    {
        torch.manual_seed(34);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        lora.mark_only_lora_as_trainable(c.Layer, LoraBias.All);
        c.Layer.forward(c.Input()).square().sum().backward();
        Assert.IsNull(c.Layer.weight.grad, $"{kind}: weight frozen");
        if (c.Layer.bias is not null)
        {
            Assert.IsNotNull(c.Layer.bias.grad, $"{kind}: bias trains with bias = all");
        }
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_HundredTrainEvalCycles_WeightStaysWithin1e6(string kind)
    {
        torch.manual_seed(35);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        var original = c.Layer.weight.detach().clone();
        for (var i = 0; i < 100; i++)
        {
            c.Layer.eval();
            c.Layer.train();
        }

        // Each cycle adds then subtracts the same float32 ΔW: rounding only.
        Assert.IsTrue(MaxAbsoluteDifference(c.Layer.weight, original) <= 1e-6, $"{kind}: drift {MaxAbsoluteDifference(c.Layer.weight, original)}");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_StateDictRoundTrip_ReproducesOutputs(string kind)
    {
        torch.manual_seed(36);
        using var scope = NewDisposeScope();
        var source = LayerCase.Create(kind);
        source.RandomizeFactors();
        var target = LayerCase.Create(kind);
        var (missing, unexpected) = target.Layer.load_state_dict(source.Layer.state_dict());
        Assert.AreEqual(0, missing.Count + unexpected.Count);
        var x = source.Input();
        AssertExactlyEqual(target.Layer.forward(x), source.Layer.forward(x), kind);
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_AdapterLoadedIntoMergedLayer_SameModelAsLoadedUnmerged(string kind)
    {
        // loralib #190.
        torch.manual_seed(37);
        using var scope = NewDisposeScope();
        var trained = LayerCase.Create(kind);
        trained.RandomizeFactors();
        var adapter = lora.lora_state_dict(trained.Layer, LoraBias.None);
        Assert.AreEqual(2, adapter.Count);

        var mergedFirst = LayerCase.Create(kind);
        var unmergedFirst = LayerCase.Create(kind);
        foreach (var c in new[] { mergedFirst, unmergedFirst })
        {
            c.Layer.load_state_dict(trained.Layer.state_dict());
            c.RandomizeFactors(); // a different adapter is in place before loading
        }

        mergedFirst.Layer.eval();
        mergedFirst.Layer.load_state_dict(adapter, strict: false);
        unmergedFirst.Layer.load_state_dict(adapter, strict: false);
        unmergedFirst.Layer.eval();
        trained.Layer.eval();
        var x = trained.Input();
        var expected = trained.Layer.forward(x);
        Assert.IsTrue(MaxRelativeDifference(mergedFirst.Layer.forward(x), expected) <= 1e-5, $"{kind}: loaded after merge");
        Assert.IsTrue(MaxRelativeDifference(unmergedFirst.Layer.forward(x), expected) <= 1e-5, $"{kind}: loaded before merge");
        mergedFirst.Layer.train();
        unmergedFirst.Layer.train();
        Assert.IsTrue(MaxAbsoluteDifference(mergedFirst.Layer.weight, unmergedFirst.Layer.weight) <= 1e-6, $"{kind}: same base weight after unmerge");
    }

    [TestMethod]
    [DynamicData(nameof(KindsWithDropout))]
    public void Layer_Dropout_ActiveInTrainingInactiveInEval(string kind)
    {
        torch.manual_seed(38);
        using var scope = NewDisposeScope();
        var withDropout = LayerCase.Create(kind, lora_dropout: 0.5, merge_weights: false);
        withDropout.RandomizeFactors();
        var reference = LayerCase.Create(kind);
        reference.Layer.load_state_dict(withDropout.Layer.state_dict());
        var x = withDropout.Input();
        var noDropout = reference.Layer.forward(x).detach();
        Assert.IsTrue(MaxRelativeDifference(withDropout.Layer.forward(x).detach(), noDropout) > 1e-3, $"{kind}: dropout acts in training");
        withDropout.Layer.eval();
        Assert.IsFalse(withDropout.Layer.merged);
        Assert.IsTrue(MaxRelativeDifference(withDropout.Layer.forward(x), noDropout) <= 1e-6, $"{kind}: no dropout in eval");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_HalfPrecisionBase_MergesDeltaComputedInFloat32(string kind)
    {
        torch.manual_seed(39);
        using var scope = NewDisposeScope();
        var half = LayerCase.Create(kind, dtype: ScalarType.Float16);
        var single = LayerCase.Create(kind);
        Assert.AreEqual(ScalarType.Float16, half.Layer.weight.dtype);
        Assert.AreEqual(ScalarType.Float32, half.Layer.lora_A!.dtype, "factors stay float32");
        half.RandomizeFactors();
        using (no_grad())
        {
            single.Layer.weight.copy_(half.Layer.weight);
            single.Layer.lora_A!.copy_(half.Layer.lora_A);
            single.Layer.lora_B!.copy_(half.Layer.lora_B!);
        }

        half.Layer.merge();
        single.Layer.merge();
        // W_half + ΔW computed in float32 and rounded once: exactly the float32 merge rounded to half.
        AssertExactlyEqual(half.Layer.weight, single.Layer.weight.to(ScalarType.Float16), kind);
    }
}
