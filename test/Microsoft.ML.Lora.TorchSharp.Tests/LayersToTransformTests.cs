using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>PEFT ≥ 0.20's <c>layers_to_transform</c>: the first index in a module path is the layer; nested indices are not.</summary>
[TestClass]
public sealed class LayersToTransformTests
{
    [TestMethod]
    public void Inject_NestedExpertIndices_SelectsByTheFirstIndexInThePath()
    {
        using var scope = NewDisposeScope();
        var model = MixtureOfExperts();
        var config = new LoraConfig
        {
            r = 2,
            target_modules = ["proj"],
            layers_to_transform = [1],
        };
        lora.inject_adapter_in_model(config, model);
        var adapted = model.named_modules().Where(m => m.module is Modules.LoraLayer).Select(m => m.name).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        // The last index (the expert) would pick encoder.layer.0.experts.1.proj and encoder.layer.1.experts.1.proj.
        CollectionAssert.AreEqual(new[] { "encoder.layer.1.experts.0.proj", "encoder.layer.1.experts.1.proj" }, adapted);
    }

    [TestMethod]
    public void Inject_LayerZeroOfNestedModel_AdaptsBothItsExpertsOnly()
    {
        using var scope = NewDisposeScope();
        var model = MixtureOfExperts();
        lora.inject_adapter_in_model(new LoraConfig { r = 2, target_modules = ["proj"], layers_to_transform = [0] }, model);
        var adapted = model.named_modules().Where(m => m.module is Modules.LoraLayer).Select(m => m.name).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        CollectionAssert.AreEqual(new[] { "encoder.layer.0.experts.0.proj", "encoder.layer.0.experts.1.proj" }, adapted);
    }

    /// <summary>encoder.layer.{0,1}.experts.{0,1}.proj: two layers, each with two experts.</summary>
    private static nn.Module<Tensor, Tensor> MixtureOfExperts()
    {
        nn.Module<Tensor, Tensor> Expert() => nn.Sequential(("proj", nn.Linear(4, 4)));
        nn.Module<Tensor, Tensor> Layer() => nn.Sequential(("experts", nn.Sequential(("0", Expert()), ("1", Expert()))));
        return nn.Sequential(("encoder", nn.Sequential(("layer", nn.Sequential(("0", Layer()), ("1", Layer()))))));
    }
}
