using Microsoft.ML.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary><see cref="BertModel.GradientCheckpointing"/>: the same loss and gradients as a plain backward, dropout included.</summary>
[TestClass]
public sealed class GradientCheckpointingTests
{
    private static Dictionary<string, Tensor> Gradients(bool checkpointing, bool loraOnly, out float loss)
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

        model.GradientCheckpointing = checkpointing;
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
    [DataRow(true, DisplayName = "LoRA on query, value, dense")]
    [DataRow(false, DisplayName = "full fine-tuning")]
    public void GradientCheckpointing_TrainingWithDropout_SameLossAndGradients(bool loraOnly)
    {
        using var scope = NewDisposeScope();
        var plain = Gradients(false, loraOnly, out float plainLoss);
        var checkpointed = Gradients(true, loraOnly, out float checkpointedLoss);

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
    public void GradientCheckpointing_EvalOrNoGrad_OutputUnchanged()
    {
        using var scope = NewDisposeScope();
        var model = TestData.TinyModel(seed: 5);
        var (ids, mask, types) = TestData.TinyBatch(3);
        var plain = model.forward(ids, mask, types);
        model.GradientCheckpointing = true;
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(model.forward(ids, mask, types), plain), "eval mode runs the layers as they are");
        model.train();
        using var noGrad = no_grad();
        torch.manual_seed(1);
        var trainPlain = model.forward(ids, mask, types);
        model.GradientCheckpointing = false;
        torch.manual_seed(1);
        Assert.AreEqual(0.0, TestData.MaxAbsDiff(model.forward(ids, mask, types), trainPlain), "no_grad runs the layers as they are");
    }
}
