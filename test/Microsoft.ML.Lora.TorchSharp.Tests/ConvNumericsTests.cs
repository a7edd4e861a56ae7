using TorchSharp;
using static Microsoft.ML.Lora.Tests.TestUtil;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// A LoRA convolution's float32 output and gradients (input, lora_A, lora_B) at the shapes ResNet-18's adapted layers run,
/// against the same computation in float64. libtorch hands float32 convolutions to oneDNN, whose kernels differ by CPU;
/// libtorch 2.10's compute a wrong input gradient (25–90 % of the largest value off, or NaN) for kernels larger than 1
/// whose output channels are not a multiple of their vector block (8 on AVX2, 16 on AVX-512) — PEFT's rank-r lora_A is
/// such a convolution — which made LoRA on ResNet-18 diverge on an AVX-512 CPU. float64 runs libtorch's own loops. A
/// merged-vs-unmerged comparison cannot catch this (both sides use the same kernels); this test fails on such a CPU
/// if the layer's workaround (padding output channels to a multiple of 16 where the input gradient is needed) is removed.
/// </summary>
[TestClass]
public sealed class ConvNumericsTests
{
    public static IEnumerable<object[]> Shapes() =>
    [
        // channels in, channels out, rank, kernel, stride, input side
        [64, 64, 8, 3, 1, 14], [64, 64, 4, 3, 1, 14], [64, 64, 1, 3, 1, 14], [64, 64, 12, 3, 1, 14], [64, 64, 24, 3, 1, 14],
        [64, 128, 8, 3, 2, 14], [512, 512, 8, 3, 1, 2], [64, 64, 16, 3, 1, 14], [8, 5, 4, 3, 1, 9], [3, 64, 8, 7, 2, 28],
    ];

    [TestMethod]
    [DynamicData(nameof(Shapes))]
    public void PeftConv2d_Float32_OutputAndGradients_EqualFloat64(int inChannels, int outChannels, int r, int kernel, int stride, int side)
    {
        torch.manual_seed(inChannels * 1000 + outChannels * 10 + r);
        using var scope = NewDisposeScope();
        var layer = lora.Conv2d(inChannels, outChannels, kernel, r: r, lora_alpha: 2 * r, stride: stride, padding: kernel / 2,
            merge_weights: false, factorization: LoraConvFactorization.Peft);
        Randomize(layer.lora_B, 0.05);
        var x = randn(4, inChannels, side, side);
        long outSide = (side + 2 * (kernel / 2) - kernel) / stride + 1;
        var upstream = randn(4, outChannels, outSide, outSide);

        layer.train();
        var x32 = x.detach().requires_grad_(true);
        layer.call(x32).backward([upstream]);
        var got = new[] { ("input gradient", x32.grad!), ("lora_A gradient", layer.lora_A!.grad!), ("lora_B gradient", layer.lora_B!.grad!) };

        // float64 reference from the layer's own tensors: conv(x, W, b) + conv1x1(conv(x, A), B)·scaling.
        Tensor D(Tensor t) => t.detach().to(ScalarType.Float64).requires_grad_(true);
        var (x64, w64, b64, a64, bUp64) = (D(x), D(layer.weight), D(layer.bias!), D(layer.lora_A), D(layer.lora_B));
        var reference = nn.functional.conv2d(x64, w64, b64, [stride, stride], [kernel / 2, kernel / 2])
            + nn.functional.conv2d(nn.functional.conv2d(x64, a64, null, [stride, stride], [kernel / 2, kernel / 2]), bUp64) * layer.scaling;
        reference.backward([upstream.to(ScalarType.Float64)]);
        var want = new[] { x64.grad!, a64.grad!, bUp64.grad! };

        using (no_grad())
        {
            layer.eval();
            AssertClose("output", layer.call(x).to(ScalarType.Float64), reference.detach());
        }

        for (int i = 0; i < got.Length; i++)
        {
            AssertClose(got[i].Item1, got[i].Item2.to(ScalarType.Float64), want[i]);
        }

        void AssertClose(string name, Tensor actual, Tensor expected)
        {
            Assert.IsTrue(actual.isfinite().all().item<bool>(), $"{name}: not finite");
            double error = (actual - expected).abs().max().item<double>() / Math.Max(expected.abs().max().item<double>(), 1e-30);
            Assert.IsLessThan(1e-4, error, $"{name}, conv {inChannels}→{outChannels} r={r} k{kernel} s{stride} {side}×{side}: largest error relative to the largest value");
        }
    }
}
