using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// loralib #190: merging on <c>eval()</c> is a cache, not state. <c>state_dict()</c> reports the base weight W (never
/// W + ΔW), a full checkpoint loaded into a merged layer keeps ΔW, and <c>train()</c> restores W bit for bit.
/// </summary>
[TestClass]
public sealed class MergedStateDictTests
{
    public static IEnumerable<object[]> Kinds => LayerCase.Kinds.Select(k => new object[] { k });

    [TestMethod]
    public void Linear_StateDictAfterEval_WeightIsTheBaseWeightBitForBit()
    {
        // The issue's own reproduction: lora.Linear(4, 3, r: 2, lora_alpha: 4) with random lora_B.
        torch.manual_seed(190);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(4, 3, r: 2, lora_alpha: 4);
        Randomize(layer.lora_B);
        var baseWeight = layer.weight.detach().clone();
        layer.eval();
        Assert.IsTrue(layer.merged);
        Assert.IsTrue(MaxAbsoluteDifference(layer.weight, baseWeight) > 0.1, "the live parameter holds W + ΔW while merged");
        var state = layer.state_dict();
        AssertExactlyEqual(state["weight"], baseWeight, "state_dict()[\"weight\"] after eval()");
        CollectionAssert.AreEquivalent(new[] { "weight", "bias", "lora_A", "lora_B" }, state.Keys.ToArray());
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_StateDictInsideModelAfterEval_EqualsStateDictInTraining(string kind)
    {
        torch.manual_seed(191);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        // A model built the usual way: modules in fields and in a ModuleList (TorchSharp's Sequential keeps its children
        // outside the registry its state_dict walks, see LoraLayer's remarks).
        var model = new Holder(c.Layer);
        var training = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        model.eval();
        Assert.IsTrue(c.Layer.merged, kind);
        var evaluating = model.state_dict();
        CollectionAssert.AreEquivalent(training.Keys.ToArray(), evaluating.Keys.ToArray(), kind);
        foreach (var (key, value) in training)
        {
            AssertExactlyEqual(evaluating[key], value, $"{kind}: {key}");
        }
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_FullCheckpointLoadedIntoMergedLayer_KeepsDeltaAndTrainRestoresBaseExactly(string kind)
    {
        torch.manual_seed(192);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        var baseWeight = c.Layer.weight.detach().clone();
        var checkpoint = c.Layer.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        var x = c.Input();
        c.Layer.eval();
        var before = c.Layer.forward(x).detach().clone();

        var (missing, unexpected) = c.Layer.load_state_dict(checkpoint);
        Assert.AreEqual(0, missing.Count + unexpected.Count);
        Assert.IsTrue(c.Layer.merged, kind);

        // Same weights loaded: the output must not move (it moved by up to 1.73 when ΔW was silently lost).
        Assert.IsTrue(MaxAbsoluteDifference(c.Layer.forward(x), before) <= 1e-6, $"{kind}: output after loading the same checkpoint");
        c.Layer.train();
        AssertExactlyEqual(c.Layer.weight, baseWeight, $"{kind}: base weight after train()");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_OtherModelsCheckpointLoadedIntoMergedLayer_GivesThatModel(string kind)
    {
        torch.manual_seed(193);
        using var scope = NewDisposeScope();
        var source = LayerCase.Create(kind);
        source.RandomizeFactors();
        var target = LayerCase.Create(kind); // other base weight, other factors
        target.RandomizeFactors();
        target.Layer.eval();
        target.Layer.load_state_dict(source.Layer.state_dict());
        var x = source.Input();
        var expected = source.Layer.forward(x).detach().clone(); // unmerged, training mode (no dropout)
        // 1e-5 relative: merged (W + ΔW) against unmerged (W·x + B·A·x) float32 arithmetic.
        Assert.IsTrue(MaxRelativeDifference(target.Layer.forward(x), expected) <= 1e-5, $"{kind}: merged target");
        target.Layer.train();
        AssertExactlyEqual(target.Layer.weight, source.Layer.weight, $"{kind}: base weight after train()");
        AssertExactlyEqual(target.Layer.forward(x), expected, $"{kind}: unmerged target");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Layer_SaveLoadInferSaveCycles_BytesAndOutputsStayIdentical(string kind)
    {
        torch.manual_seed(194);
        using var scope = NewDisposeScope();
        var original = LayerCase.Create(kind);
        original.RandomizeFactors();
        var x = original.Input();
        original.Layer.eval();
        var expected = original.Layer.forward(x).detach().clone();
        var saved = Save(original.Layer);

        for (var cycle = 0; cycle < 3; cycle++)
        {
            // Alternate the mode of the layer that loads: merged (eval) and unmerged (train).
            var next = LayerCase.Create(kind);
            next.RandomizeFactors();
            next.Layer.train(cycle % 2 == 1);
            using (var stream = new MemoryStream(saved))
            {
                next.Layer.load(stream);
            }

            next.Layer.eval();
            AssertExactlyEqual(next.Layer.forward(x), expected, $"{kind}: inference after load, cycle {cycle}");
            var again = Save(next.Layer);
            CollectionAssert.AreEqual(saved, again, $"{kind}: bytes of the re-saved layer, cycle {cycle}");
            next.Layer.train();
            AssertExactlyEqual(next.Layer.weight, original.Layer.state_dict()["weight"], $"{kind}: base weight after train(), cycle {cycle}");
        }
    }

    [TestMethod]
    public void Linear_FactorsLoadedWhileMergedThenStateDict_ReportsLoadedFactorsAndBase()
    {
        torch.manual_seed(195);
        using var scope = NewDisposeScope();
        var layer = lora.Linear(5, 4, r: 2, lora_alpha: 2);
        Randomize(layer.lora_B);
        var baseWeight = layer.weight.detach().clone();
        layer.eval();
        var other = lora.Linear(5, 4, r: 2, lora_alpha: 2);
        Randomize(other.lora_B);
        layer.load_state_dict(lora.lora_state_dict(other), strict: false);
        var state = layer.state_dict();
        AssertExactlyEqual(state["weight"], baseWeight, "weight");
        AssertExactlyEqual(state["lora_B"], other.lora_B!, "lora_B");
        using var delta = other.get_delta_weight();
        Assert.IsTrue(MaxAbsoluteDifference(layer.weight, baseWeight + delta) <= 1e-6, "merged weight holds the loaded ΔW");
    }

    private sealed class Holder : nn.Module
    {
        private readonly TorchSharp.Modules.ModuleList<nn.Module> block;

        public Holder(nn.Module adapted)
            : base(nameof(Holder))
        {
            block = new TorchSharp.Modules.ModuleList<nn.Module>(adapted);
            RegisterComponents();
        }
    }

    private static byte[] Save(nn.Module module)
    {
        using var stream = new MemoryStream();
        module.save(stream);
        return stream.ToArray();
    }
}
