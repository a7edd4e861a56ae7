using Microsoft.ML.Lora.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// What autograd keeps for the backward pass of the operations LoRA training runs through frozen layers, and the
/// memory-lean dropout paths used under selective recomputation (<see cref="ByteMaskDropout"/>,
/// <see cref="LoraLayer.RecomputeDroppedInput"/>): same values and random draws as libtorch's dropout.
/// A tensor that autograd keeps cannot be changed in place before <c>backward()</c> (libtorch checks its version), so
/// changing the input after the forward tells whether the operation kept it.
/// </summary>
[TestClass]
public sealed class SavedActivationsTests
{
    [TestMethod]
    [DataRow(new long[] { 6, 8 }, true, false, DisplayName = "2-D input with bias (addmm)")]
    [DataRow(new long[] { 2, 3, 8 }, true, false, DisplayName = "3-D contiguous input with bias (folded addmm)")]
    [DataRow(new long[] { 2, 3, 8 }, false, false, DisplayName = "3-D input without bias (matmul)")]
    [DataRow(new long[] { 3, 2, 8 }, true, true, DisplayName = "3-D transposed input with bias (matmul)")]
    public void FunctionalLinear_FrozenWeight_DoesNotKeepItsInput(long[] shape, bool withBias, bool transposed)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(3);
        var weight = randn(5, 8);
        var bias = withBias ? randn(5) : null;
        var leaf = randn(shape).requires_grad_();
        var input = leaf.mul(2.0);
        var viewed = transposed ? input.transpose(0, 1) : input;
        var output = nn.functional.linear(viewed, weight, bias);

        input.add_(1.0); // would fail backward() if linear had kept its input
        output.sum().backward();

        // d/dleaf of sum(linear(2·leaf)) = 2·Σ_out W[out, :] at every position.
        var expected = weight.sum(dim: 0).mul(2.0).expand(shape);
        double diff = TestUtil.MaxAbsoluteDifference(leaf.grad!, expected);
        Assert.IsTrue(diff < 1e-5, $"gradient through the frozen weight: max |Δ| {diff}");
    }

    [TestMethod]
    public void FunctionalLinear_TrainableWeight_KeepsItsInput()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(3);
        var weight = randn(5, 8).requires_grad_();
        var input = randn(2, 3, 8).requires_grad_().mul(2.0);
        var output = nn.functional.linear(input, weight, randn(5));

        input.add_(1.0);
        Assert.Throws<Exception>(() => output.sum().backward(), "the weight's gradient needs the input, so changing it is caught");
    }

    [TestMethod]
    [DataRow(ScalarType.Float32, 0.1)]
    [DataRow(ScalarType.Float32, 0.5)]
    [DataRow(ScalarType.BFloat16, 0.1)]
    public void ByteMaskDropout_SameSeed_BitIdenticalToDropout(ScalarType dtype, double p)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(11);
        var leaf = randn(4, 7, 33).requires_grad_();
        var input = leaf.to(dtype).mul(1.5);
        var upstream = randn(4, 7, 33).to(dtype);

        torch.manual_seed(5);
        var reference = nn.functional.dropout(input, p, training: true);
        var referenceNext = rand(3);
        var referenceGrad = autograd.grad([reference], [leaf], [upstream])[0];

        torch.manual_seed(5);
        var lean = ByteMaskDropout.Dropout(input, p);
        var leanNext = rand(3);
        var leanGrad = autograd.grad([lean], [leaf], [upstream])[0];

        TestUtil.AssertExactlyEqual(lean, reference, "output (same mask, same scale)");
        TestUtil.AssertExactlyEqual(leanGrad, referenceGrad, "input gradient");
        TestUtil.AssertExactlyEqual(leanNext, referenceNext, "the random-number state after the draw");
        Assert.IsTrue(reference.eq(0).any().item<bool>() && reference.ne(0).any().item<bool>(), "the case drops some elements and keeps others");
    }

    [TestMethod]
    public void ByteMaskDropout_DoesNotKeepItsInput()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(11);
        var leaf = randn(4, 9).requires_grad_();
        var input = leaf.mul(1.5);
        var output = ByteMaskDropout.Dropout(input, 0.3);
        input.add_(1.0);
        output.sum().backward();
        var expected = output.detach().ne(0).to(ScalarType.Float32).mul(1.5 / 0.7);
        Assert.IsTrue(TestUtil.MaxAbsoluteDifference(leaf.grad!, expected) < 1e-6, "gradient: 1.5/(1-p) where kept, 0 where dropped");
    }

    [TestMethod]
    [DataRow(ScalarType.Float32, true, DisplayName = "float32 layer, input requires grad")]
    [DataRow(ScalarType.Float32, false, DisplayName = "float32 layer, frozen input (first layer)")]
    [DataRow(ScalarType.BFloat16, true, DisplayName = "bfloat16 base, float32 factors")]
    public void LoraLinear_RecomputeDroppedInput_SameOutputRandomDrawsAndGradients(ScalarType dtype, bool inputRequiresGrad)
    {
        using var scope = NewDisposeScope();
        var (plainOut, plainNext, plainGrads) = Run(recompute: false);
        var (leanOut, leanNext, leanGrads) = Run(recompute: true);

        TestUtil.AssertExactlyEqual(leanOut, plainOut, "output (same mask, same operations)");
        TestUtil.AssertExactlyEqual(leanNext, plainNext, "the random-number state after the forward");
        Assert.AreEqual(plainGrads.Count, leanGrads.Count);
        foreach (var (name, grad) in plainGrads)
        {
            // Backward repeats autograd's operations on the same values: the gradients agree to float32 rounding.
            double relative = TestUtil.MaxRelativeDifference(leanGrads[name], grad);
            Assert.IsTrue(relative <= 1e-6, $"{name}: max relative difference {relative}");
        }

        (Tensor Output, Tensor Next, Dictionary<string, Tensor> Grads) Run(bool recompute)
        {
            torch.manual_seed(21);
            var layer = lora.Linear(24, 16, r: 4, lora_alpha: 8, lora_dropout: 0.25, dtype: dtype);
            TestUtil.Randomize(layer.lora_B);
            layer.weight.requires_grad = false;
            layer.bias!.requires_grad = false;
            layer.train();
            layer.RecomputeDroppedInput = recompute;
            var leaf = randn(3, 5, 24).requires_grad_(inputRequiresGrad);
            var input = leaf.to(dtype).mul(1.0);
            torch.manual_seed(9);
            var output = layer.call(input);
            var next = rand(3);
            var upstream = randn(3, 5, 16).to(output.dtype);
            output.backward([upstream]);
            var grads = new Dictionary<string, Tensor>
            {
                ["lora_A"] = layer.lora_A!.grad!.clone(),
                ["lora_B"] = layer.lora_B!.grad!.clone(),
            };
            if (inputRequiresGrad)
            {
                grads["input"] = leaf.grad!.clone();
            }

            return (output.detach().clone(), next, grads);
        }
    }
}
