using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;
using LoraLinear = Microsoft.ML.Lora.Modules.Linear;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class InjectionTests
{
    private static Tensor Ids() => tensor(new long[] { 1, 5, 7, 2, 0, 19, 3, 3 }, 2, 4);

    [TestMethod]
    public void Inject_QueryAndValue_ReplacesFourModulesInRegistryAndFields()
    {
        torch.manual_seed(20);
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var before = model.forward(Ids()).detach();
        var baseKeys = model.state_dict().Keys.ToList();

        var replaced = lora.inject_adapter_in_model(new LoraConfig { r = 2, lora_alpha = 4, target_modules = ["query", "value"] }, model);

        CollectionAssert.AreEqual(
            new[] { "layer.0.attention.self.query", "layer.0.attention.self.value", "layer.1.attention.self.query", "layer.1.attention.self.value" },
            replaced.ToArray());
        var registry = model.named_modules().ToDictionary(m => m.name, m => m.module);
        foreach (var path in replaced)
        {
            Assert.IsInstanceOfType<LoraLinear>(registry[path], $"registry holds the LoRA layer at {path}");
        }

        Assert.IsInstanceOfType<LoraLinear>(model.Layers[0].Attn.Self.Query, "the field forward reads was swapped");
        Assert.AreSame(registry["layer.1.attention.self.value"], model.Layers[1].Attn.Self.Value, "field and registry hold the same layer");
        Assert.IsNotInstanceOfType<LoraLinear>(registry["layer.0.attention.self.key"]);

        // B = 0: the adapted model computes exactly what the base model computed.
        AssertExactlyEqual(model.forward(Ids()), before, "forward before training");

        // The base keys are all still there, in order, plus lora_A/lora_B for each replaced module.
        var keys = model.state_dict().Keys.ToList();
        CollectionAssert.AreEqual(baseKeys, keys.Where(k => !IsLoraKey(k)).ToList());
        Assert.AreEqual(8, keys.Count(IsLoraKey));
        Assert.IsTrue(keys.Contains("layer.0.attention.self.query.lora_A"));
    }

    [TestMethod]
    public void Inject_ForwardUsesLoraBranch_ChangingBChangesOutput()
    {
        torch.manual_seed(21);
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var before = model.forward(Ids()).detach();
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["value"] }, model);
        Randomize(((LoraLinear)model.Layers[0].Attn.Self.Value).lora_B);
        Assert.IsTrue(MaxAbsoluteDifference(model.forward(Ids()), before) > 1e-4, "forward must read the swapped field");
    }

    [TestMethod]
    public void Inject_TakesOverBaseTensors_BaseCheckpointLoadsUnchanged()
    {
        torch.manual_seed(22);
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var baseQuery = model.Layers[0].Attn.Self.Query.named_parameters().First(p => p.name == "weight").parameter;
        var checkpoint = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());

        lora.inject_adapter_in_model(new LoraConfig { r = 4, target_modules = ["query"] }, model);
        var layer = (LoraLinear)model.Layers[0].Attn.Self.Query;
        Assert.AreSame(baseQuery, layer.weight, "the LoRA layer owns the base tensor itself, not a copy");

        using (no_grad())
        {
            foreach (var (_, p) in model.named_parameters())
            {
                p.add_(1.0);
            }
        }

        var (missing, unexpected) = model.load_state_dict(checkpoint, strict: false);
        Assert.AreEqual(0, unexpected.Count, "every base key is known to the adapted model");
        Assert.IsTrue(missing.All(IsLoraKey), "only LoRA factors are missing from a base checkpoint");
        AssertExactlyEqual(layer.weight, checkpoint["layer.0.attention.self.query.weight"], "base weight loaded");
    }

    [TestMethod]
    public void Inject_PathQualifiedName_MatchesOnlyDotAlignedSuffix()
    {
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var replaced = lora.inject_adapter_in_model(new LoraConfig { target_modules = ["output.dense"] }, model);
        CollectionAssert.AreEqual(new[] { "layer.0.attention.output.dense", "layer.1.attention.output.dense" }, replaced.ToArray());
    }

    [TestMethod]
    public void Inject_Regex_MustMatchWholePath()
    {
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var replaced = lora.inject_adapter_in_model(new LoraConfig { target_modules_regex = @"layer\.1\..*\.(key|value)" }, model);
        CollectionAssert.AreEqual(new[] { "layer.1.attention.self.key", "layer.1.attention.self.value" }, replaced.ToArray());

        var partial = new TinyEncoder();
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.inject_adapter_in_model(new LoraConfig { target_modules_regex = "query" }, partial));
        StringAssert.Contains(e.Message, "layer.0.attention.self.query", "a partial match is no match; the error lists module names");
    }

    [TestMethod]
    public void Inject_AllLinear_SkipsClassifierAndSwapsSequentialChildren()
    {
        torch.manual_seed(23);
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var before = model.forward(Ids()).detach();
        var replaced = lora.inject_adapter_in_model(new LoraConfig { target_modules = ["all-linear"] }, model);
        Assert.AreEqual(2 * 4 + 2, replaced.Count, "4 linears per block and 2 in the head");
        Assert.IsFalse(replaced.Contains("classifier"));
        Assert.IsInstanceOfType<LoraLinear>(model.Head[0], "Sequential's own list was swapped");
        Assert.IsInstanceOfType<LoraLinear>(model.Head[2]);
        AssertExactlyEqual(model.forward(Ids()), before, "forward before training");
    }

    [TestMethod]
    public void Inject_ExcludeModules_LeavesThemAlone()
    {
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var replaced = lora.inject_adapter_in_model(
            new LoraConfig { target_modules = ["query", "value"], exclude_modules = ["layer.1.attention.self.query"] }, model);
        CollectionAssert.AreEqual(
            new[] { "layer.0.attention.self.query", "layer.0.attention.self.value", "layer.1.attention.self.value" }, replaced.ToArray());
    }

    [TestMethod]
    public void Inject_RankAndAlphaPattern_FirstMatchingKeyWins()
    {
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var config = new LoraConfig
        {
            r = 2,
            lora_alpha = 2,
            target_modules = ["query", "value"],
            rank_pattern = new Dictionary<string, int> { [@"layer\.1\.attention\.self\.value"] = 4, ["value"] = 6 },
            alpha_pattern = new Dictionary<string, double> { ["query"] = 8 },
        };
        lora.inject_adapter_in_model(config, model);
        var registry = model.named_modules().ToDictionary(m => m.name, m => m.module);
        var q0 = (LoraLinear)registry["layer.0.attention.self.query"];
        var v0 = (LoraLinear)registry["layer.0.attention.self.value"];
        var v1 = (LoraLinear)registry["layer.1.attention.self.value"];
        Assert.AreEqual(2, q0.r);
        Assert.AreEqual(4.0, q0.scaling, 1e-12, "alpha 8 / r 2");
        Assert.AreEqual(6, v0.r, "'value' matches as a suffix");
        Assert.AreEqual(4, v1.r, "the first listed key wins");
        CollectionAssert.AreEqual(new long[] { 4, 8 }, v1.lora_A!.shape);
    }

    [TestMethod]
    public void Inject_NoMatch_ThrowsListingAvailableModules()
    {
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.inject_adapter_in_model(new LoraConfig { target_modules = ["q_proj"] }, model));
        Assert.AreEqual("config", e.ParamName);
        StringAssert.Contains(e.Message, "q_proj");
        StringAssert.Contains(e.Message, "layer.1.attention.output.dense");
        Assert.IsFalse(model.named_modules().Any(m => m.module is ILoraLayer), "nothing changed");
    }

    [TestMethod]
    public void Inject_UnsupportedTarget_ThrowsAndChangesNothing()
    {
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.inject_adapter_in_model(new LoraConfig { target_modules = ["query", "act"] }, model));
        StringAssert.Contains(e.Message, "head.act");
        Assert.IsFalse(model.named_modules().Any(m => m.module is ILoraLayer), "planned swaps are not half applied");
    }

    [TestMethod]
    public void Inject_SealedFieldType_ThrowsExplainingTheFix()
    {
        using var scope = NewDisposeScope();
        var model = new SealedFieldModel();
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.inject_adapter_in_model(new LoraConfig { target_modules = ["proj"] }, model));
        StringAssert.Contains(e.Message, "Module<Tensor, Tensor>");
    }

    [TestMethod]
    public void Inject_ModulesToSaveAndBias_ControlTrainableParameters()
    {
        using var scope = NewDisposeScope();
        var model = new TinyEncoder(vocab: 20, hidden: 8);
        lora.inject_adapter_in_model(
            new LoraConfig { r = 2, target_modules = ["query", "value"], modules_to_save = ["classifier"], bias = "lora_only" }, model);
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToHashSet();
        var expected = new HashSet<string> { "classifier.weight", "classifier.bias" };
        foreach (var layer in new[] { 0, 1 })
        {
            foreach (var m in new[] { "query", "value" })
            {
                foreach (var p in new[] { "lora_A", "lora_B", "bias" })
                {
                    expected.Add($"layer.{layer}.attention.self.{m}.{p}");
                }
            }
        }

        CollectionAssert.AreEquivalent(expected.ToList(), trainable.ToList());

        // 4 × (A 2×8 + B 8×2 + bias 8) + classifier 8×3 + 3 = 4 × 40 + 27
        var (count, total) = lora.print_trainable_parameters(model);
        Assert.AreEqual(187, count);
        Assert.AreEqual(model.parameters().Sum(p => p.numel()), total);
    }

    [TestMethod]
    public void LoraStateDict_ModuleNamedLikeLora_IsNotSweptIn()
    {
        using var scope = NewDisposeScope();
        var model = new NamedLoraHeadModel();
        CollectionAssert.AreEquivalent(new[] { "body.lora_A", "body.lora_B" }, lora.lora_state_dict(model).Keys.ToArray());
        CollectionAssert.AreEquivalent(new[] { "body.lora_A", "body.lora_B", "body.bias" }, lora.lora_state_dict(model, LoraBias.LoraOnly).Keys.ToArray());
        CollectionAssert.AreEquivalent(new[] { "body.lora_A", "body.lora_B", "body.bias", "my_lora_head.bias" }, lora.lora_state_dict(model, "all").Keys.ToArray());
        lora.mark_only_lora_as_trainable(model);
        Assert.IsFalse(model.named_parameters().Any(p => p.name.StartsWith("my_lora_head", StringComparison.Ordinal) && p.parameter.requires_grad));
    }

    [TestMethod]
    public void LoraStateDict_UnknownBias_ThrowsNamingIt()
    {
        using var scope = NewDisposeScope();
        var model = new NamedLoraHeadModel();
        var e = Assert.ThrowsExactly<ArgumentException>(() => lora.lora_state_dict(model, "some"));
        Assert.AreEqual("bias", e.ParamName);
    }
}
