using Microsoft.ML.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// <see cref="BertModel.Recomputation"/> (and its boolean form <see cref="BertModel.GradientCheckpointing"/>): the same
/// loss and gradients as a plain backward, dropout included, and each mode recomputes what it says.
/// </summary>
[TestClass]
public sealed class GradientCheckpointingTests
{
    private static Dictionary<string, Tensor> Gradients(Recomputation recomputation, bool loraOnly, out float loss)
    {
        var model = TestData.TinyModel(seed: 5, layers: 3);
        if (loraOnly)
        {
            lora.inject_adapter_in_model(new LoraConfig { r = 4, lora_alpha = 8, lora_dropout = 0.1, target_modules = ["query", "value", "dense"] }, model);
            using var noGrad = no_grad();
            foreach (var (name, p) in model.named_parameters().Where(p => p.name.Contains("lora_B", StringComparison.Ordinal)))
            {
                p.normal_(0, 0.2); // B = 0 at init would leave A without gradient
            }
        }

        model.Recomputation = recomputation;
        model.train();
        var (ids, mask, types) = TestData.TinyBatch(3);
        torch.manual_seed(17); // dropout masks (hidden, attention, LoRA) come from here
        var hidden = model.forward(ids, mask, types);
        var target = Pooling.Pool(hidden, mask, PoolingMode.Mean, normalize: false).pow(2).sum();
        target.backward();
        loss = target.item<float>();
        return model.named_parameters().Where(p => p.parameter.requires_grad)
            .ToDictionary(p => p.name, p => p.parameter.grad!.clone());
    }

    [TestMethod]
    [DataRow(Recomputation.Full, true, DisplayName = "full checkpointing, LoRA on query, value, dense")]
    [DataRow(Recomputation.Full, false, DisplayName = "full checkpointing, full fine-tuning")]
    [DataRow(Recomputation.Selective, true, DisplayName = "selective recomputation, LoRA on query, value, dense")]
    [DataRow(Recomputation.Selective, false, DisplayName = "selective recomputation, full fine-tuning")]
    public void Recomputation_TrainingWithDropout_SameLossAndGradients(Recomputation recomputation, bool loraOnly)
    {
        using var scope = NewDisposeScope();
        var plain = Gradients(Recomputation.None, loraOnly, out float plainLoss);
        var checkpointed = Gradients(recomputation, loraOnly, out float checkpointedLoss);

        Assert.AreEqual(plainLoss, checkpointedLoss, 1e-5 * Math.Abs(plainLoss), "loss (same ops, same dropout masks)");
        CollectionAssert.AreEquivalent(plain.Keys.ToList(), checkpointed.Keys.ToList(), "the same parameters receive gradients");
        Assert.IsTrue(plain.Keys.Any(k => k.StartsWith("encoder.layer.0.", StringComparison.Ordinal)), "gradients reach the first layer");
        foreach (var (name, grad) in plain)
        {
            // Recomputation repeats the same float32 operations; only accumulation order may differ.
            double diff = TestData.MaxAbsDiff(checkpointed[name], grad);
            double scale = grad.abs().max().item<float>();
            Assert.IsTrue(scale > 0, $"{name}: reference gradient is zero");
            Assert.IsTrue(diff <= 1e-4 * scale + 1e-7, $"{name}: max |Δ| {diff} vs scale {scale}");
        }
    }

    [TestMethod]
    public void Selective_TrainingWithLoraAndHiddenDropout_SameLossAndGradientsWithin1e6()
    {
        using var scope = NewDisposeScope();
        var plain = Gradients(Recomputation.None, loraOnly: true, out float plainLoss);
        var selective = Gradients(Recomputation.Selective, loraOnly: true, out float selectiveLoss);

        // The forward runs the same operations on the same values: the attention core's checkpoint, the byte-mask
        // hidden dropout and the LoRA branches that recompute their dropped input all reproduce libtorch's values.
        Assert.AreEqual(plainLoss, selectiveLoss, "loss, bit for bit");
        foreach (var (name, grad) in plain)
        {
            // Backward repeats autograd's float32 operations; only the accumulation order of a few products may differ.
            double diff = TestData.MaxAbsDiff(selective[name], grad);
            double scale = grad.abs().max().item<float>();
            Assert.IsTrue(diff <= 1e-6 * scale, $"{name}: max |Δ| {diff} vs scale {scale}");
        }
    }

    [TestMethod]
    public void Selective_TrainingForward_LoraLayersRecomputeTheirDroppedInput()
    {
        using var scope = NewDisposeScope();
        var model = TestData.TinyModel(seed: 5, layers: 2);
        model.Recomputation = Recomputation.Selective; // before injection: the flag is applied at each training forward
        lora.inject_adapter_in_model(new LoraConfig { r = 4, lora_alpha = 8, lora_dropout = 0.1, target_modules = ["query", "value"] }, model);
        var layers = model.modules().OfType<Lora.Modules.LoraLayer>().ToList();
        Assert.AreEqual(4, layers.Count, "query and value of 2 layers");
        var (ids, mask, types) = TestData.TinyBatch(3);
        model.train();

        model.forward(ids, mask, types).sum().backward();
        Assert.IsTrue(layers.All(l => l.RecomputeDroppedInput), "selective: every LoRA layer of the encoder");

        model.Recomputation = Recomputation.None;
        model.forward(ids, mask, types).sum().backward();
        Assert.IsFalse(layers.Any(l => l.RecomputeDroppedInput), "none: the plain branch");
    }

    [TestMethod]
    [DataRow(Recomputation.Full)]
    [DataRow(Recomputation.Selective)]
    public void Recomputation_EvalOrNoGrad_OutputUnchanged(Recomputation recomputation)
    {
        using var scope = NewDisposeScope();
        var model = TestData.TinyModel(seed: 5);
        var (ids, mask, types) = TestData.TinyBatch(3);
        var plain = model.forward(ids, mask, types);
        model.Recomputation = recomputation;
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(model.forward(ids, mask, types), plain), "eval mode runs the layers as they are");
        model.train();
        using var noGrad = no_grad();
        torch.manual_seed(1);
        var trainPlain = model.forward(ids, mask, types);
        model.Recomputation = Recomputation.None;
        torch.manual_seed(1);
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(model.forward(ids, mask, types), trainPlain), "no_grad runs the layers as they are");
    }

    [TestMethod]
    [DataRow(Recomputation.None, 1, DisplayName = "none: each projection runs once")]
    [DataRow(Recomputation.Selective, 1, DisplayName = "selective: the matrix products are kept, not recomputed")]
    [DataRow(Recomputation.Full, 2, DisplayName = "full: each layer runs again in backward")]
    public void Recomputation_TrainingStep_RunsEachProjectionAsOftenAsTheModeSays(Recomputation recomputation, int expectedRuns)
    {
        using var scope = NewDisposeScope();
        var model = TestData.TinyModel(seed: 5, layers: 2);
        lora.inject_adapter_in_model(new LoraConfig { r = 4, lora_alpha = 8, target_modules = ["query", "value"] }, model);
        var counts = new Dictionary<string, int>();
        var modules = model.named_modules().Where(m => m.name.EndsWith(".query", StringComparison.Ordinal) || m.name.EndsWith(".intermediate.dense", StringComparison.Ordinal)).ToList();
        Assert.AreEqual(4, modules.Count, "query and intermediate.dense of 2 layers");
        foreach (var (name, module) in modules)
        {
            counts[name] = 0;
            ((nn.Module<Tensor, Tensor>)module).register_forward_hook((_, _, output) =>
            {
                counts[name]++;
                return output;
            });
        }

        model.Recomputation = recomputation;
        model.train();
        var (ids, mask, types) = TestData.TinyBatch(3);
        model.forward(ids, mask, types).pow(2).sum().backward();

        foreach (var (name, runs) in counts)
        {
            Assert.AreEqual(expectedRuns, runs, $"{name}: forward runs in one training step with {recomputation}");
        }
    }

    [TestMethod]
    public void GradientCheckpointing_IsTheBooleanFormOfRecomputation()
    {
        using var model = TestData.TinyModel(seed: 5);
        Assert.AreEqual(Recomputation.None, model.Recomputation, "default");
        model.GradientCheckpointing = true;
        Assert.AreEqual(Recomputation.Full, model.Recomputation);
        model.Recomputation = Recomputation.Selective;
        Assert.IsFalse(model.GradientCheckpointing, "selective is not full checkpointing");
        model.GradientCheckpointing = false;
        Assert.AreEqual(Recomputation.None, model.Recomputation);
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => model.Recomputation = (Recomputation)7);
        StringAssert.Contains(error.Message, "Recomputation", StringComparison.Ordinal);
    }
}
