using TorchSharp;
using TorchSharp.Modules;
using static Microsoft.ML.Lora.Tests.TestUtil;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>PEFT 0.20's modules_to_save semantics: one copy of the module per adapter, the active one shown.</summary>
[TestClass]
public sealed class ModulesToSaveTests
{
    private const string Head = "base_model.model.classifier.weight";

    /// <summary>
    /// Adapters "a" (query) and "b" (value), both with modules_to_save = ["classifier"] and random B factors; each head
    /// trained to its own random values (a's while a was active, b's while b was); "a" active at the end.
    /// </summary>
    private sealed class TwoHeads
    {
        public required MiniBert Model { get; init; }

        public required Tensor Original { get; init; }

        public required Tensor HeadA { get; init; }

        public required Tensor HeadB { get; init; }

        public Parameter Weight => (Parameter)Model.Module("classifier").named_parameters().Single(p => p.name == "weight").parameter;
    }

    private static LoraConfig Config(string target) =>
        new() { r = 2, lora_alpha = 4, target_modules = [target], modules_to_save = ["classifier"] };

    private static TwoHeads Create(long seed)
    {
        var model = MiniBert.Create(seed);
        var original = HeadWeight(model).detach().clone();
        lora.add_adapter(model, "a", Config("query"));
        lora.add_adapter(model, "b", Config("value"));
        torch.manual_seed(seed + 1);
        foreach (var (name, p) in model.named_parameters().Where(p => p.name.EndsWith("lora_B", StringComparison.Ordinal)))
        {
            Randomize(p);
        }

        RandomizeHead(model);
        var headA = HeadWeight(model).detach().clone();
        lora.set_adapter(model, "b");
        RandomizeHead(model);
        var headB = HeadWeight(model).detach().clone();
        lora.set_adapter(model, "a");
        return new TwoHeads { Model = model, Original = original, HeadA = headA, HeadB = headB };
    }

    private static Parameter HeadWeight(nn.Module model) =>
        model.named_parameters().Single(p => p.name == "classifier.weight").parameter;

    private static void RandomizeHead(nn.Module model)
    {
        foreach (var (name, p) in model.named_parameters().Where(p => p.name.StartsWith("classifier.", StringComparison.Ordinal)))
        {
            Randomize(p);
        }
    }

    [TestMethod]
    public void AddAdapter_HeadOfActiveAdapterTrained_NewAdapterCopyStartsFromOriginalHead()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(299);
        var original = HeadWeight(model).detach().clone();
        lora.add_adapter(model, "a", Config("query"));
        RandomizeHead(model);
        var headA = HeadWeight(model).detach().clone();
        lora.add_adapter(model, "b", Config("value"));
        AssertExactlyEqual(HeadWeight(model), headA, "adding inactive b leaves a's head in the module");
        lora.set_adapter(model, "b");
        AssertExactlyEqual(HeadWeight(model), original, "b's copy is taken from the original head, as PEFT deep-copies it");
    }

    [TestMethod]
    public void SetAdapter_TwoAdaptersWithOwnHeads_PredictDifferentlyAndSwitchBackIsBitExact()
    {
        using var scope = NewDisposeScope();
        var m = Create(300);
        var ids = MiniBert.Ids();
        AssertExactlyEqual(m.Weight, m.HeadA, "a active: a's head");
        var outA = m.Model.forward(ids).detach().clone();
        lora.set_adapter(m.Model, "b");
        AssertExactlyEqual(m.Weight, m.HeadB, "b active: b's head");
        var outB = m.Model.forward(ids).detach().clone();
        Assert.IsTrue(MaxAbsoluteDifference(outA, outB) > 1e-2, "the two adapters predict differently");
        lora.set_adapter(m.Model, "a");
        AssertExactlyEqual(m.Weight, m.HeadA, "back to a: a's head bit for bit");
        AssertExactlyEqual(m.Model.forward(ids), outA, "back to a: a's predictions bit for bit");

        var keys = m.Model.state_dict().Keys.Where(k => k.Contains("classifier", StringComparison.Ordinal)).ToArray();
        CollectionAssert.AreEqual(new[] { "classifier.weight", "classifier.bias" }, keys, "state_dict keys are the plain model's");
    }

    [TestMethod]
    public void SetAdapter_SwitchingHeads_KeepsParameterObjectsAndTrainsOnlyActiveCopy()
    {
        using var scope = NewDisposeScope();
        var m = Create(301);
        var weight = m.Weight;
        var loss = m.Model.forward(MiniBert.Ids()).pow(2).sum();
        loss.backward();
        using (no_grad())
        {
            weight.sub_(weight.grad!.mul(0.1)); // one SGD step on the live head: a's copy
        }

        var trainedA = weight.detach().clone();
        Assert.IsTrue(MaxAbsoluteDifference(trainedA, m.HeadA) > 1e-4, "the step changed a's head");
        lora.set_adapter(m.Model, "b");
        Assert.IsTrue(ReferenceEquals(weight, m.Weight), "the optimizer's parameter stays the module's parameter");
        AssertExactlyEqual(m.Weight, m.HeadB, "b's copy was not trained");
        lora.set_adapter(m.Model, "a");
        AssertExactlyEqual(m.Weight, trainedA, "a keeps its trained head");
    }

    [TestMethod]
    public void DisableAdapter_WithOwnHeads_ShowsOriginalHeadAndRestoresOnExit()
    {
        using var scope = NewDisposeScope();
        var m = Create(302);
        using (lora.disable_adapter(m.Model))
        {
            AssertExactlyEqual(m.Weight, m.Original, "disabled: the original head");
        }

        AssertExactlyEqual(m.Weight, m.HeadA, "after the scope: a's head again");
    }

    [TestMethod]
    public void Save_InactiveAdapter_WritesItsOwnHead()
    {
        using var scope = NewDisposeScope();
        var m = Create(303);
        var dir = PeftFiles.TempDir();
        try
        {
            var folderB = PeftAdapter.Save(m.Model, dir, "b");
            var folderA = PeftAdapter.Save(m.Model, dir, "a");
            CollectionAssert.AreEqual(m.HeadB.data<float>().ToArray(), PeftFiles.ReadFloats(Path.Combine(folderB, PeftAdapter.WeightsFileName), Head),
                "b's file holds b's head while a is active");
            CollectionAssert.AreEqual(m.HeadA.data<float>().ToArray(), PeftFiles.ReadFloats(Path.Combine(folderA, PeftAdapter.WeightsFileName), Head));
            AssertExactlyEqual(m.Weight, m.HeadA, "saving changes nothing");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Load_IntoInactiveAdapter_FillsItsCopyAndKeepsActiveHead()
    {
        using var scope = NewDisposeScope();
        var m = Create(304);
        var dir = PeftFiles.TempDir();
        try
        {
            PeftAdapter.Save(m.Model, dir, "b");
            lora.set_adapter(m.Model, "b");
            var expected = m.Model.forward(MiniBert.Ids()).detach().clone();

            var other = MiniBert.Create(304); // same base weights
            lora.add_adapter(other, "a", Config("query"));
            RandomizeHead(other);
            var headA = HeadWeight(other).detach().clone();

            // A failed load changes nothing (transactional).
            var broken = PeftFiles.TempDir();
            File.Copy(Path.Combine(dir, "b", PeftAdapter.ConfigFileName), Path.Combine(broken, PeftAdapter.ConfigFileName));
            PeftFiles.WriteSafetensors(Path.Combine(broken, PeftAdapter.WeightsFileName),
                ("base_model.model.encoder.layer.0.attention.self.value.lora_A.weight", [3, 4], PeftFiles.Values(12, 1)),
                (Head, [2, 4], PeftFiles.Values(8, 2)));
            Assert.ThrowsExactly<ArgumentException>(() => PeftAdapter.Load(other, broken, "b", log: _ => { }));
            Directory.Delete(broken, recursive: true);
            CollectionAssert.AreEqual(new[] { "a" }, lora.get_adapter_names(other).ToArray());
            AssertExactlyEqual(HeadWeight(other), headA, "failed load: a's head untouched");

            PeftAdapter.Load(other, dir, "b", log: _ => { });
            CollectionAssert.AreEqual(new[] { "a" }, lora.active_adapters(other).ToArray());
            AssertExactlyEqual(HeadWeight(other), headA, "loading inactive b leaves a's head in the module");
            lora.set_adapter(other, "b");
            AssertExactlyEqual(HeadWeight(other), m.HeadB, "b's loaded head");
            AssertExactlyEqual(other.forward(MiniBert.Ids()), expected, "same base, factors and head: same predictions");
            lora.set_adapter(other, "a");
            AssertExactlyEqual(HeadWeight(other), headA, "a's head kept its values");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void DeleteAdapter_WithOwnHeads_LiveCopyGivesWayToOriginalAndOthersStay()
    {
        using var scope = NewDisposeScope();
        var m = Create(305);
        lora.delete_adapter(m.Model, "a");
        Assert.AreEqual(0, lora.active_adapters(m.Model).Count);
        AssertExactlyEqual(m.Weight, m.Original, "no active adapter: the original head");
        Assert.IsFalse(m.Weight.requires_grad, "the original head is frozen, as in PEFT");
        lora.set_adapter(m.Model, "b");
        AssertExactlyEqual(m.Weight, m.HeadB, "b's copy survived a's deletion");
        Assert.IsTrue(m.Weight.requires_grad, "the active copy trains");
        lora.delete_adapter(m.Model, "b");
        AssertExactlyEqual(m.Weight, m.Original, "no adapter left: the original head");
    }

    [TestMethod]
    public void SetAdapter_TwoActiveAdaptersWithOwnHeads_ThrowsAndChangesNothing()
    {
        using var scope = NewDisposeScope();
        var m = Create(306);
        lora.add_adapter(m.Model, "c", new LoraConfig { r = 2, target_modules = ["key"] });
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.set_adapter(m.Model, "a", "b"));
        StringAssert.Contains(e.Message, "'a' and 'b'");
        StringAssert.Contains(e.Message, "'classifier'");
        CollectionAssert.AreEqual(new[] { "a" }, lora.active_adapters(m.Model).ToArray());
        AssertExactlyEqual(m.Weight, m.HeadA, "a's head still shown");

        lora.set_adapter(m.Model, "b", "c"); // only b has a copy: allowed
        AssertExactlyEqual(m.Weight, m.HeadB, "b's head");
    }

    [TestMethod]
    public void MixedBatch_RowsNeedingTwoHeads_ThrowsAndOneHeadIsShownForTheScope()
    {
        using var scope = NewDisposeScope();
        var m = Create(307);
        var e = Assert.ThrowsExactly<NotSupportedException>(() => lora.adapter_names_scope(m.Model, ["a", "b", "a"]));
        StringAssert.Contains(e.Message, "'classifier'");
        Assert.ThrowsExactly<NotSupportedException>(() => lora.adapter_names_scope(m.Model, ["a", lora.BASE_ADAPTER_ROW, "a"]));

        lora.set_adapter(m.Model, "b");
        var ids = MiniBert.Ids();
        Tensor mixed;
        using (lora.adapter_names_scope(m.Model, ["a", "a", "a"]))
        {
            AssertExactlyEqual(m.Weight, m.HeadA, "rows of a: a's head for the scope");
            mixed = m.Model.forward(ids).detach().clone();
        }

        AssertExactlyEqual(m.Weight, m.HeadB, "after the scope: the active b's head");
        lora.set_adapter(m.Model, "a");
        // Same computation per row, batched differently: relative 1e-6.
        Assert.IsTrue(MaxRelativeDifference(mixed, m.Model.forward(ids)) < 1e-6);
    }

    [TestMethod]
    public void MergeAndUnload_WithOwnHeads_KeepsActiveAdaptersHead()
    {
        using var scope = NewDisposeScope();
        var m = Create(308);
        var expected = m.Model.forward(MiniBert.Ids()).detach().clone();
        var weight = m.Weight;
        lora.merge_and_unload(m.Model);
        AssertExactlyEqual(HeadWeight(m.Model), m.HeadA, "the active adapter's head stays");
        Assert.IsTrue(ReferenceEquals(weight, m.Weight), "the same module and parameter");
        // Merging adds ΔW into W in float32: relative 1e-5.
        Assert.IsTrue(MaxRelativeDifference(m.Model.forward(MiniBert.Ids()), expected) < 1e-5);
    }
}
