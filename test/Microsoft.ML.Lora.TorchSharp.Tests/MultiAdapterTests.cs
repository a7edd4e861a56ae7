using TorchSharp;
using static Microsoft.ML.Lora.Tests.TestUtil;
using static TorchSharp.torch;
using LoraLayer = Microsoft.ML.Lora.Modules.LoraLayer;
using TorchModules = TorchSharp.Modules;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class MultiAdapterTests
{
    private const string Q0 = "encoder.layer.0.attention.self.query";
    private const string V1 = "encoder.layer.1.attention.self.value";

    /// <summary>A model with adapters "a" (query, value; r 2) and "b" (query; r 3, α 6, rsLoRA), both with random B.</summary>
    private static MiniBert TwoAdapters(long seed)
    {
        var model = MiniBert.Create(seed);
        lora.add_adapter(model, "a", new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query", "value"] });
        lora.add_adapter(model, "b", new LoraConfig { r = 3, lora_alpha = 6, use_rslora = true, target_modules = ["query"] });
        torch.manual_seed(seed + 1);
        foreach (var (name, p) in model.named_parameters())
        {
            if (name.EndsWith("lora_B", StringComparison.Ordinal))
            {
                Randomize(p);
            }
        }

        return model;
    }

    /// <summary>ΔW = B·A·scaling of adapter <paramref name="name"/> in float64, from its raw factors (not get_delta_weight).</summary>
    private static Tensor RawDelta(LoraLayer layer, string name, double scaling) =>
        layer.get_lora_B(name).detach().to(ScalarType.Float64).matmul(layer.get_lora_A(name).detach().to(ScalarType.Float64)) * scaling;

    [TestMethod]
    public void AddAdapter_NamedAdapters_KeysSeparateFirstActiveOthersInactive()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(60);
        var keys = model.state_dict().Keys.ToList();
        Assert.IsTrue(keys.Contains(Q0 + ".lora_adapters.a.lora_A"));
        Assert.IsTrue(keys.Contains(Q0 + ".lora_adapters.b.lora_B"));
        Assert.IsFalse(keys.Contains(Q0 + ".lora_A"), "no default adapter: no loralib key");
        CollectionAssert.AreEqual(new[] { "a", "b" }, lora.get_adapter_names(model).ToArray());
        CollectionAssert.AreEqual(new[] { "a" }, lora.active_adapters(model).ToArray(), "the model's first adapter is active, later ones are not");
        var layer = (LoraLayer)model.Module(Q0);
        Assert.IsTrue(layer.get_lora_A("a").requires_grad);
        Assert.IsFalse(layer.get_lora_A("b").requires_grad, "inactive adapters do not train");
        Assert.AreEqual(6 / Math.Sqrt(3), layer.get_scaling("b"), 1e-12);
        Assert.AreEqual(0, layer.r, "r reports the \"default\" adapter");

        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.add_adapter(model, "a", new LoraConfig { target_modules = ["key"] }));
        StringAssert.Contains(e.Message, "'a'");
    }

    [TestMethod]
    public void SetAdapter_Several_LayerOutputIsBasePlusSumOfUpdates()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(61);
        var layer = (LoraLayer)model.Module(Q0);
        torch.manual_seed(62);
        var x = randn(2, 3, 4);
        lora.set_adapter(model, "a", "b");
        CollectionAssert.AreEqual(new[] { "a", "b" }, layer.active_adapters.ToArray());
        var expected = x.matmul(layer.weight.t()) + layer.bias!;
        foreach (var name in new[] { "a", "b" })
        {
            expected += x.matmul(layer.get_lora_A(name).t()).matmul(layer.get_lora_B(name).t()) * layer.get_scaling(name);
        }

        // Same float32 operations in another order: relative 1e-6.
        Assert.IsTrue(MaxRelativeDifference(layer.forward(x), expected) < 1e-6);
        Assert.ThrowsExactly<ArgumentException>(() => lora.set_adapter(model, "nope"));
    }

    [TestMethod]
    public void Merge_SeveralActiveAdapters_EvalMergesBothTrainRestoresWeight()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(63);
        lora.set_adapter(model, "a", "b");
        var layer = (LoraLayer)model.Module(Q0);
        var w0 = layer.weight.detach().clone();
        var unmerged = model.forward(MiniBert.Ids()).detach();
        model.eval();
        Assert.IsTrue(layer.merged);
        var expectedWeight = w0 + layer.get_delta_weight("a") + layer.get_delta_weight("b");
        Assert.IsTrue(MaxRelativeDifference(layer.weight, expectedWeight) < 1e-6, "W + ΔW_a + ΔW_b");
        Assert.IsTrue(MaxRelativeDifference(model.forward(MiniBert.Ids()), unmerged) < 1e-5, "merged forward = unmerged forward");
        model.train();
        Assert.IsFalse(layer.merged);
        Assert.IsTrue(MaxAbsoluteDifference(layer.weight, w0) < 1e-6, "unmerge restores W up to float32 rounding");
    }

    [TestMethod]
    public void MixedBatch_PerRowAdapters_EqualsRunningEachRowWithItsAdapter()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(64);
        var ids = MiniBert.Ids(); // 3 rows
        string[] rows = ["b", lora.BASE_ADAPTER_ROW, "a"];
        Tensor mixed;
        using (lora.adapter_names_scope(model, rows))
        {
            mixed = model.forward(ids).detach();
        }

        lora.set_adapter(model, "b");
        var rowB = model.forward(ids).detach()[0];
        lora.set_adapter(model, "a");
        var rowA = model.forward(ids).detach()[2];
        Tensor rowBase;
        using (lora.disable_adapter(model))
        {
            rowBase = model.forward(ids).detach()[1];
        }

        // Same computation on a sub-batch: relative 1e-6 (batched matmul may group sums differently).
        Assert.IsTrue(MaxRelativeDifference(mixed[0], rowB) < 1e-6, "row 0 uses b");
        Assert.IsTrue(MaxRelativeDifference(mixed[1], rowBase) < 1e-6, "row 1 uses the base model");
        Assert.IsTrue(MaxRelativeDifference(mixed[2], rowA) < 1e-6, "row 2 uses a");
        Assert.IsTrue(MaxAbsoluteDifference(rowA, rowB) > 1e-4, "the adapters differ, so the test can fail");

        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.adapter_names_scope(model, ["a", "zz", "b"]));
        StringAssert.Contains(e.Message, "zz");
        using (lora.adapter_names_scope(model, ["a", "b"]))
        {
            Assert.ThrowsExactly<ArgumentException>(() => model.forward(ids), "two names for three rows");
        }
    }

    [TestMethod]
    public void MixedBatch_InEvalMode_UnmergesForTheScopeAndMergesAfter()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(75);
        model.eval(); // merges "a"
        var q = (LoraLayer)model.Module(Q0);
        var mergedOut = model.forward(MiniBert.Ids()).detach();
        using (lora.adapter_names_scope(model, ["a", "a", "a"]))
        {
            Assert.IsFalse(q.merged);
            // All rows on the active adapter: the merged model's output (float32 merge: relative 1e-5).
            Assert.IsTrue(MaxRelativeDifference(model.forward(MiniBert.Ids()), mergedOut) < 1e-5);
            q.merge();
            Assert.ThrowsExactly<InvalidOperationException>(() => model.forward(MiniBert.Ids()));
            q.unmerge();
        }

        Assert.IsTrue(q.merged, "merged again after the scope");
        lora.set_adapter(model, "b");
        Assert.IsTrue(q.merged, "set_adapter on a merged model merges the new active adapter");
        Assert.IsTrue(MaxRelativeDifference(q.weight, q.get_delta_weight("b") + MiniBert.Create(75).named_parameters().Single(p => p.name == Q0 + ".weight").parameter) < 1e-5);
    }

    [TestMethod]
    public void DisableAdapter_Scope_BaseOnlyInsideAdaptersBackAfterAlsoWhenMerged()
    {
        using var scope = NewDisposeScope();
        var plain = MiniBert.Create(65);
        var baseOut = plain.forward(MiniBert.Ids()).detach();
        var model = TwoAdapters(65);
        model.eval(); // merges "a"
        var adapted = model.forward(MiniBert.Ids()).detach();
        Assert.IsTrue(MaxAbsoluteDifference(adapted, baseOut) > 1e-4);
        using (lora.disable_adapter(model))
        {
            // Unmerging subtracts the float32 ΔW again: 1e-5 relative.
            Assert.IsTrue(MaxRelativeDifference(model.forward(MiniBert.Ids()), baseOut) < 1e-5, "base model alone");
        }

        Assert.IsTrue(((LoraLayer)model.Module(Q0)).merged, "re-merged after the scope");
        Assert.IsTrue(MaxRelativeDifference(model.forward(MiniBert.Ids()), adapted) < 1e-5, "adapters back");
    }

    [TestMethod]
    public void MergeAndUnload_ActiveAdapters_PlainModulesSameForward()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(66);
        lora.set_adapter(model, "a", "b");
        var expected = model.forward(MiniBert.Ids()).detach();
        var result = lora.merge_and_unload(model);
        Assert.AreSame(model, result);
        Assert.IsFalse(model.modules().Any(m => m is ILoraLayer), "no LoRA layer left");
        Assert.IsInstanceOfType<TorchModules.Linear>(model.Module(Q0));
        Assert.IsFalse(model.state_dict().Keys.Any(IsLoraKey));
        Assert.AreEqual(MiniBert.Create(66).state_dict().Count, model.state_dict().Count, "the base keys only");
        // Merged float32 weights vs. the branch computation: relative 1e-5.
        Assert.IsTrue(MaxRelativeDifference(model.forward(MiniBert.Ids()), expected) < 1e-5);
    }

    [TestMethod]
    public void Unload_WithoutMerging_BaseModelBack()
    {
        using var scope = NewDisposeScope();
        var baseOut = MiniBert.Create(67).forward(MiniBert.Ids()).detach();
        var model = TwoAdapters(67);
        lora.unload(model);
        Assert.IsInstanceOfType<TorchModules.Linear>(model.Module(V1));
        AssertExactlyEqual(model.forward(MiniBert.Ids()), baseOut, "base weights untouched");
    }

    [TestMethod]
    public void DeleteAdapter_RemovesKeysAndUpdate()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(68);
        lora.set_adapter(model, "a", "b");
        var onlyA = TwoAdapters(68);
        lora.delete_adapter(model, "b");
        CollectionAssert.AreEqual(new[] { "a" }, lora.get_adapter_names(model).ToArray());
        CollectionAssert.AreEqual(new[] { "a" }, lora.active_adapters(model).ToArray());
        Assert.IsFalse(model.state_dict().Keys.Any(k => k.Contains(".b.", StringComparison.Ordinal)));
        AssertExactlyEqual(model.forward(MiniBert.Ids()), onlyA.forward(MiniBert.Ids()), "as if b never existed");
        Assert.ThrowsExactly<ArgumentException>(() => lora.delete_adapter(model, "b"));
    }

    [TestMethod]
    public void DeleteAdapter_Default_LoralibKeysGoneOtherAdapterStays()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(73);
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["query"] }, model);
        lora.add_adapter(model, "x", new LoraConfig { r = 2, target_modules = ["query"] });
        var q = (LoraLayer)model.Module(Q0);
        Randomize(q.get_lora_B("x"));
        lora.set_adapter(model, "x");
        var expected = model.forward(MiniBert.Ids()).detach();
        lora.delete_adapter(model, "default");
        Assert.IsFalse(model.state_dict().ContainsKey(Q0 + ".lora_A"));
        Assert.IsNull(q.lora_A);
        Assert.AreEqual(0, q.r);
        Assert.IsTrue(model.state_dict().ContainsKey(Q0 + ".lora_adapters.x.lora_A"));
        AssertExactlyEqual(model.forward(MiniBert.Ids()), expected, "x still applies");
    }

    [TestMethod]
    public void Backward_ActiveAdapterOnly_GetsGradients()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(74);
        lora.set_adapter(model, "b");
        model.forward(MiniBert.Ids()).pow(2).sum().backward();
        var q = (LoraLayer)model.Module(Q0);
        Assert.IsNotNull(q.get_lora_B("b").grad);
        Assert.IsTrue(q.get_lora_A("b").grad!.abs().sum().item<float>() > 0, "A of the active adapter learns (B ≠ 0)");
        Assert.IsNull(q.get_lora_A("a").grad, "inactive adapter: no gradient");
        Assert.IsNull(q.weight.grad, "base weight frozen");
    }

    [TestMethod]
    public void WeightedAdapter_Cat_DeltaIsWeightedSumOfDeltas()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(69);
        lora.add_weighted_adapter(model, ["a", "b"], [0.7, -1.3], "ab", "cat");
        var q = (LoraLayer)model.Module(Q0);
        Assert.AreEqual(5, q.get_rank("ab"), "cat: ranks add up");
        Assert.AreEqual(1.0, q.get_scaling("ab"), 1e-12);

        // Independent of the code under test: each ΔW = B·A·scaling in float64 from the raw factors and the scalings
        // the configs give (a: α/r = 4/2; b: rsLoRA α/√r = 6/√3).
        var expected = RawDelta(q, "a", 4.0 / 2.0) * 0.7 + RawDelta(q, "b", 6.0 / Math.Sqrt(3.0)) * -1.3;
        Assert.IsTrue(MaxRelativeDifference(RawDelta(q, "ab", 1.0), expected) < 1e-6, "float32 factors: relative 1e-6");
        Assert.IsTrue(MaxRelativeDifference(q.get_delta_weight("ab"), expected) < 1e-6, "get_delta_weight agrees");

        // cat's layout (PEFT): A stacks the weighted A's (rows 0–1 from a, 2–4 from b), B the B's side by side.
        var aa = q.get_lora_A("a").detach().to(ScalarType.Float64);
        var ab = q.get_lora_A("b").detach().to(ScalarType.Float64);
        var catA = q.get_lora_A("ab").detach().to(ScalarType.Float64);
        Assert.IsTrue(MaxRelativeDifference(catA[..2], aa * (0.7 * 2.0)) < 1e-6, "A rows of a: A_a·w·scaling");
        Assert.IsTrue(MaxRelativeDifference(catA[2..], ab * (-1.3 * 6.0 / Math.Sqrt(3.0))) < 1e-6, "A rows of b");
        AssertExactlyEqual(q.get_lora_B("ab").detach(), cat([q.get_lora_B("a").detach(), q.get_lora_B("b").detach()], 1), "B = [B_a, B_b]");

        var v = (LoraLayer)model.Module(V1); // only "a" lives here: b's rows stay zero
        Assert.IsTrue(MaxRelativeDifference(RawDelta(v, "ab", 1.0), RawDelta(v, "a", 2.0) * 0.7) < 1e-6);
        CollectionAssert.AreEqual(new[] { "a" }, lora.active_adapters(model).ToArray(), "not activated");
    }

    [TestMethod]
    public void WeightedAdapter_Linear_CombinesFactorsWithSquareRootWeightsAsPeft()
    {
        using var scope = NewDisposeScope();
        var model = MiniBert.Create(70);
        lora.add_adapter(model, "a", new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query"] });
        lora.add_adapter(model, "b", new LoraConfig { r = 2, lora_alpha = 2, target_modules = ["query"] });
        torch.manual_seed(71);
        var q = (LoraLayer)model.Module(Q0);
        Randomize(q.get_lora_B("a"));
        Randomize(q.get_lora_B("b"));

        lora.add_weighted_adapter(model, ["a", "b"], [0.5, 2.0], "lin", "linear");
        var ca = Math.Sqrt(0.5 * 2.0); // √(w·scaling), scaling a = 4/2
        var cb = Math.Sqrt(2.0 * 1.0);
        var expectedA = q.get_lora_A("a") * ca + q.get_lora_A("b") * cb;
        var expectedB = q.get_lora_B("a") * ca + q.get_lora_B("b") * cb;
        Assert.AreEqual(2, q.get_rank("lin"));
        Assert.IsTrue(MaxRelativeDifference(q.get_lora_A("lin"), expectedA) < 1e-6);
        Assert.IsTrue(MaxRelativeDifference(q.get_lora_B("lin"), expectedB) < 1e-6);

        // One adapter: exactly w·ΔW, ΔW = B·A·α/r from the raw factors.
        lora.add_weighted_adapter(model, ["a"], [3.0], "a3", "linear");
        Assert.IsTrue(MaxRelativeDifference(RawDelta(q, "a3", q.get_scaling("a3")), RawDelta(q, "a", 4.0 / 2.0) * 3.0) < 1e-6);

        // Two adapters: ΔW = (c_a·B_a + c_b·B_b)(c_a·A_a + c_b·A_b), cross terms included (PEFT's linear), computed here
        // from the raw factors.
        var rawA = q.get_lora_A("a").detach().to(ScalarType.Float64) * ca + q.get_lora_A("b").detach().to(ScalarType.Float64) * cb;
        var rawB = q.get_lora_B("a").detach().to(ScalarType.Float64) * ca + q.get_lora_B("b").detach().to(ScalarType.Float64) * cb;
        Assert.IsTrue(MaxRelativeDifference(RawDelta(q, "lin", q.get_scaling("lin")), rawB.matmul(rawA)) < 1e-6, "linear ΔW");

        // Negative weights, as PEFT ≥ 0.14: √|w·s| on both factors, the sign on A only.
        lora.add_weighted_adapter(model, ["a", "b"], [1.0, -0.5], "neg", "linear");
        var na = Math.Sqrt(1.0 * 2.0);
        var nb = Math.Sqrt(0.5 * 1.0);
        Assert.IsTrue(MaxRelativeDifference(q.get_lora_A("neg"), q.get_lora_A("a") * na - q.get_lora_A("b") * nb) < 1e-6);
        Assert.IsTrue(MaxRelativeDifference(q.get_lora_B("neg"), q.get_lora_B("a") * na + q.get_lora_B("b") * nb) < 1e-6);
        lora.add_adapter(model, "c", new LoraConfig { r = 3, target_modules = ["query"] });
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.add_weighted_adapter(model, ["a", "c"], [1.0, 1.0], "ac", "linear"));
        StringAssert.Contains(e.Message, "equal ranks");
    }

    [TestMethod]
    public void WeightedAdapter_Svd_FullRankExactTruncatedIsBestApproximation()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(72);
        var q = (LoraLayer)model.Module(Q0);

        // The target from the raw factors in float64 (a: α/r = 4/2; b: rsLoRA 6/√3), not from the code under test.
        var target = RawDelta(q, "a", 4.0 / 2.0) * 1.5 + RawDelta(q, "b", 6.0 / Math.Sqrt(3.0)) * 0.5;
        lora.add_weighted_adapter(model, ["a", "b"], [1.5, 0.5], "svd4", "svd", svd_rank: 4);
        Assert.AreEqual(4, q.get_rank("svd4"));
        // Rank of the sum ≤ 4 = full size of the 4×4 layer: exact up to float32 (relative 1e-5).
        Assert.IsTrue(MaxRelativeDifference(RawDelta(q, "svd4", q.get_scaling("svd4")), target) < 1e-5);

        lora.add_weighted_adapter(model, ["a", "b"], [1.5, 0.5], "svd1", "svd", svd_rank: 1);
        Assert.AreEqual(1, q.get_rank("svd1"));
        var s = torch.linalg.svdvals(target);
        var error = (RawDelta(q, "svd1", q.get_scaling("svd1")) - target).pow(2).sum().sqrt().item<double>();
        var best = s[1..].pow(2).sum().sqrt().item<double>(); // Eckart–Young: the best rank-1 error
        Assert.AreEqual(best, error, 1e-5 * Math.Max(best, 1e-3));
    }

    [TestMethod]
    public void MarkOnlyLoraAsTrainable_InactiveNamedAdapter_StaysFrozen()
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(69); // "a" active, "b" inactive
        lora.mark_only_lora_as_trainable(model);
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.IsTrue(trainable.All(n => n.Contains(".lora_adapters.a.", StringComparison.Ordinal)), string.Join(", ", trainable));
        Assert.AreEqual(4 * 2, trainable.Count, "A and B of adapter a in 2 queries and 2 values");

        lora.set_adapter(model, "b");
        lora.mark_only_lora_as_trainable(model);
        trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.AreEqual(2 * 2, trainable.Count, "A and B of adapter b in 2 queries");
        Assert.IsTrue(trainable.All(n => n.Contains(".lora_adapters.b.", StringComparison.Ordinal)), string.Join(", ", trainable));
    }

    [TestMethod]
    [DataRow("linear", -0.7)]
    [DataRow("cat", -0.7)]
    [DataRow("svd", -0.7)]
    [DataRow("linear", 2.5)]
    public void WeightedAdapter_SingleAdapter_DeltaIsWeightTimesIndependentlyComputedDelta(string combination, double weight)
    {
        // Independent of the code under test: ΔW = B·A·α/r from the raw factors and the config's α and r.
        using var scope = NewDisposeScope();
        var model = TwoAdapters(73);
        var q = (LoraLayer)model.Module(Q0);
        var expected = q.get_lora_B("a").detach().to(ScalarType.Float64).matmul(q.get_lora_A("a").detach().to(ScalarType.Float64)) * (4.0 / 2.0) * weight;
        lora.add_weighted_adapter(model, ["a"], [weight], "w", combination);
        var actual = q.get_lora_B("w").detach().to(ScalarType.Float64).matmul(q.get_lora_A("w").detach().to(ScalarType.Float64)) * q.get_scaling("w");
        // float32 factors: relative 1e-6 (one product of rank 2).
        Assert.IsTrue(MaxRelativeDifference(actual, expected) < 1e-6, $"{combination}, weight {weight}");
    }

    [TestMethod]
    [DataRow("cat")]
    [DataRow("svd")]
    public void WeightedAdapter_TwoAdaptersWithNegativeWeight_DeltaIsIndependentWeightedSum(string combination)
    {
        using var scope = NewDisposeScope();
        var model = TwoAdapters(74); // a: r 2, α 4; b: r 3, α 6, rsLoRA (scaling 6/√3)
        var q = (LoraLayer)model.Module(Q0);
        Tensor Delta(string name, double scaling) =>
            q.get_lora_B(name).detach().to(ScalarType.Float64).matmul(q.get_lora_A(name).detach().to(ScalarType.Float64)) * scaling;
        var expected = Delta("a", 4.0 / 2.0) * 0.8 + Delta("b", 6.0 / Math.Sqrt(3.0)) * -1.2;
        lora.add_weighted_adapter(model, ["a", "b"], [0.8, -1.2], "w", combination, svd_rank: 4);
        var actual = Delta("w", q.get_scaling("w"));
        // cat is exact; svd with rank 4 = the layer's full size is exact too. float32 factors: relative 1e-5.
        Assert.IsTrue(MaxRelativeDifference(actual, expected) < 1e-5, combination);
    }
}
