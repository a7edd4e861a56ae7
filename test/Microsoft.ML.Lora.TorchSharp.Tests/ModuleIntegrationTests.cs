using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Lora.Tests.TestUtil;

namespace Microsoft.ML.Lora.Tests;

/// <summary>LoRA layers inside TorchSharp's own machinery: dtype moves, train/eval propagation, Sequential.</summary>
[TestClass]
public sealed class ModuleIntegrationTests
{
    [TestMethod]
    [DynamicData(nameof(LayerContractTests.Kinds), typeof(LayerContractTests))]
    public void Layer_ToFloat64_MovesAllParametersAndStillMerges(string kind)
    {
        torch.manual_seed(80);
        using var scope = NewDisposeScope();
        var c = LayerCase.Create(kind);
        c.RandomizeFactors();
        var x = c.Input();
        var expected = c.Layer.forward(x).detach().to(ScalarType.Float64);
        c.Layer.to(ScalarType.Float64);
        Assert.IsTrue(c.Layer.parameters().All(p => p.dtype == ScalarType.Float64), "every parameter moved");
        CollectionAssert.AreEquivalent(
            c.Layer.bias is null ? new[] { "weight", "lora_A", "lora_B" } : new[] { "weight", "bias", "lora_A", "lora_B" },
            c.Layer.state_dict().Keys.ToArray(), "no extra buffers appear after .to()");
        var x64 = x.is_floating_point() ? x.to(ScalarType.Float64) : x;
        Assert.IsTrue(MaxRelativeDifference(c.Layer.forward(x64).detach(), expected) <= 1e-5, "unmerged float64");
        c.Layer.eval();
        Assert.IsTrue(MaxRelativeDifference(c.Layer.forward(x64), expected) <= 1e-5, "merged float64");
    }

    [TestMethod]
    public void Inject_IntoEvalModeModel_LayersFollowTheModelsMode()
    {
        torch.manual_seed(81);
        using var scope = NewDisposeScope();
        var model = new TinyEncoder();
        model.eval();
        lora.inject_adapter_in_model(new LoraConfig { target_modules = ["all-linear"] }, model);
        var layers = model.modules().OfType<Modules.LoraLayer>().ToList();
        Assert.AreEqual(10, layers.Count);
        Assert.IsTrue(layers.All(l => !l.training && l.merged), "replacements start in the replaced module's mode");
        model.train();
        Assert.IsTrue(layers.All(l => l.training && !l.merged), "train() reaches layers inside ModuleList and Sequential");
    }

    [TestMethod]
    public void TrainingStep_OnInjectedModel_ChangesOnlyAdapterAndSavedModules()
    {
        torch.manual_seed(82);
        var model = new TinyEncoder();
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["query", "value"], modules_to_save = ["classifier"] }, model);
        var before = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        using var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-2);
        var ids = tensor(new long[] { 1, 5, 7, 2, 0, 19, 3, 3 }, 2, 4);
        var labels = tensor(new long[] { 0, 2 });
        for (var step = 0; step < 3; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            nn.functional.cross_entropy(model.forward(ids), labels).backward();
            optimizer.step();
        }

        foreach (var (key, value) in model.state_dict())
        {
            var changed = !value.Equals(before[key]);
            var shouldChange = IsLoraKey(key) || key.StartsWith("classifier.", StringComparison.Ordinal);
            Assert.AreEqual(shouldChange, changed, $"{key} changed");
        }
    }

    [TestMethod]
    [DynamicData(nameof(LayerContractTests.Kinds), typeof(LayerContractTests))]
    public void Layer_CreatedInsideDisposeScope_OutlivesTheScope(string kind)
    {
        torch.manual_seed(83);
        LayerCase c;
        using (var inner = NewDisposeScope())
        {
            c = LayerCase.Create(kind);
            c.RandomizeFactors();
            c.Layer.eval();
            c.Layer.train();
        }

        using var scope = NewDisposeScope();
        Assert.IsTrue(c.Layer.parameters().All(p => !p.IsInvalid), "parameters survive the scope they were made in");
        var y = c.Layer.forward(c.Input());
        Assert.IsTrue(y.isfinite().all().item<bool>());
        c.Layer.Dispose();
    }
}
