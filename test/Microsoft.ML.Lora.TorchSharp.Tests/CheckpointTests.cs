using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class CheckpointTests
{
    // A two-segment stack: each segment is LoRA linear → GELU → dropout → plain linear (frozen), with a residual, so the
    // recomputation has to replay dropout and the gradient has to flow through frozen weights into the earlier segment.
    private sealed class Segment : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> up;
        private readonly nn.Module<Tensor, Tensor> down;
        private readonly nn.Module<Tensor, Tensor> dropout;

        public Segment(int width, double dropoutRate) : base(nameof(Segment))
        {
            up = lora.Linear(width, 2 * width, r: 2, lora_alpha: 4, lora_dropout: dropoutRate);
            down = nn.Linear(2 * width, width);
            dropout = nn.Dropout(dropoutRate);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => down.call(dropout.call(nn.functional.gelu(up.call(x)))).add(x);
    }

    private static (Segment First, Segment Second) Stack(double dropoutRate)
    {
        torch.manual_seed(7);
        var first = new Segment(6, dropoutRate);
        var second = new Segment(6, dropoutRate);
        foreach (var segment in new[] { first, second })
        {
            lora.mark_only_lora_as_trainable(segment);
            using var noGrad = no_grad();
            foreach (var (name, p) in segment.named_parameters())
            {
                if (name.Contains("lora_B", StringComparison.Ordinal))
                {
                    p.normal_(0, 0.5); // B = 0 at init would give A no gradient
                }
            }
        }

        return (first, second);
    }

    private static Dictionary<string, Tensor> Run(bool useCheckpoint, bool inputRequiresGrad, double dropoutRate, out Tensor? inputGrad, out Tensor loss)
    {
        var (first, second) = Stack(dropoutRate);
        torch.manual_seed(11);
        var x = randn(4, 3, 6).requires_grad_(inputRequiresGrad);
        Tensor Apply(Segment s, Tensor h) => useCheckpoint ? lora.checkpoint(s.call, h, s.parameters()) : s.call(h);
        loss = Apply(second, Apply(first, x)).pow(2).mean();
        loss.backward();
        inputGrad = inputRequiresGrad ? x.grad!.clone() : null;
        var grads = new Dictionary<string, Tensor>();
        foreach (var (name, p) in first.named_parameters())
        {
            grads["first." + name] = p.grad?.clone()!;
        }

        foreach (var (name, p) in second.named_parameters())
        {
            grads["second." + name] = p.grad?.clone()!;
        }

        return grads;
    }

    [TestMethod]
    [DataRow(true, 0.0)]
    [DataRow(false, 0.0)]
    [DataRow(true, 0.3)]
    [DataRow(false, 0.3)]
    public void Checkpoint_TwoSegments_GradientsEqualPlainBackward(bool inputRequiresGrad, double dropoutRate)
    {
        using var scope = NewDisposeScope();
        var plain = Run(false, inputRequiresGrad, dropoutRate, out var plainInputGrad, out var plainLoss);
        var checkpointed = Run(true, inputRequiresGrad, dropoutRate, out var checkpointedInputGrad, out var checkpointedLoss);

        // Same operations on the same values (and, with dropout, the same masks): equal up to float32 reordering.
        Assert.AreEqual(plainLoss.item<float>(), checkpointedLoss.item<float>(), 1e-6, "loss");
        foreach (var (name, grad) in plain)
        {
            if (grad is null)
            {
                Assert.IsNull(checkpointed[name], $"{name}: frozen, no gradient either way");
                continue;
            }

            Assert.IsTrue(name.Contains("lora_", StringComparison.Ordinal), $"{name} got a gradient but is frozen");
            Assert.IsNotNull(checkpointed[name], $"{name}: no gradient with checkpointing");
            Assert.IsTrue(grad.abs().max().item<float>() > 1e-4, $"{name}: the reference gradient is not trivially zero");
            Assert.IsTrue(checkpointed[name].allclose(grad, rtol: 1e-5, atol: 1e-7), $"{name}: checkpointed gradient differs, max |Δ| {(checkpointed[name] - grad).abs().max().item<float>()}");
        }

        if (inputRequiresGrad)
        {
            Assert.IsTrue(checkpointedInputGrad!.allclose(plainInputGrad!, rtol: 1e-5, atol: 1e-7), "input gradient");
        }
    }

    [TestMethod]
    public void Checkpoint_WithDropout_LeavesRandomStreamAsPlainBackwardDoes()
    {
        // Replaying dropout restores the generator afterwards: the next random draw is the one a run without checkpointing sees.
        using var scope = NewDisposeScope();
        Run(false, false, 0.3, out _, out _);
        float plainNext = rand(1).item<float>();
        Run(true, false, 0.3, out _, out _);
        float checkpointedNext = rand(1).item<float>();
        Assert.AreEqual(plainNext, checkpointedNext);
    }

    [TestMethod]
    public void Checkpoint_UnderNoGrad_ReturnsPlainOutputWithoutGraph()
    {
        using var scope = NewDisposeScope();
        var (first, _) = Stack(0.0);
        var x = randn(2, 3, 6);
        using var noGrad = no_grad();
        var output = lora.checkpoint(first.call, x, first.parameters());
        Assert.IsFalse(output.requires_grad);
        Assert.IsTrue(output.Equals(first.call(x)));
    }

    [TestMethod]
    public void Checkpoint_ParameterNotListed_GetsNoGradientButOthersDo()
    {
        using var scope = NewDisposeScope();
        var (first, _) = Stack(0.0);
        var listed = first.named_parameters().Where(p => p.name.StartsWith("up.lora_B", StringComparison.Ordinal)).Select(p => p.parameter).ToArray();
        var x = randn(2, 3, 6);
        lora.checkpoint(first.call, x, listed).sum().backward();
        Assert.IsNotNull((object?)listed[0].grad);
        var loraA = first.named_parameters().Single(p => p.name == "up.lora_A").parameter;
        Assert.IsNull((object?)loraA.grad, "lora_A was not passed to checkpoint, so the recomputed graph does not reach it");
    }

    [TestMethod]
    public void Checkpoint_TwoInputs_SecondDisposedBeforeBackward_GradientsEqualPlain()
    {
        // The model pattern: a mask made inside forward's own dispose scope is gone when backward recomputes.
        using var scope = NewDisposeScope();
        var (first, _) = Stack(0.0);
        var x = randn(2, 3, 6);
        Tensor Segment(Tensor h, Tensor m) => first.call(h).mul(m);

        var plainMask = rand(2, 3, 1);
        Segment(x, plainMask).pow(2).sum().backward();
        var expected = first.parameters().Where(p => p.requires_grad).Select(p => p.grad!.clone()).ToArray();
        first.zero_grad();

        Tensor output;
        using (var inner = NewDisposeScope())
        {
            var mask = plainMask.clone();
            output = lora.checkpoint(Segment, x, mask, first.parameters()).MoveToOuterDisposeScope();
        }

        output.pow(2).sum().backward();
        var actual = first.parameters().Where(p => p.requires_grad).Select(p => p.grad!).ToArray();
        Assert.AreEqual(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.IsTrue(actual[i].allclose(expected[i], rtol: 1e-5, atol: 1e-7), $"parameter {i}");
        }
    }

    [TestMethod]
    public void Checkpoint_NullArguments_NameTheParameter()
    {
        var x = zeros(1);
        Assert.AreEqual("function", Assert.ThrowsExactly<ArgumentNullException>(() => lora.checkpoint(null!, x, [])).ParamName);
        Assert.AreEqual("input", Assert.ThrowsExactly<ArgumentNullException>(() => lora.checkpoint(t => t, null!, [])).ParamName);
        Assert.AreEqual("parameters", Assert.ThrowsExactly<ArgumentNullException>(() => lora.checkpoint(t => t, x, null!)).ParamName);
    }
}
