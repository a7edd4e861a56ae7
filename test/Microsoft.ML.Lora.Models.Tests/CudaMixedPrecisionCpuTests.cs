using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// The half-precision paths that CUDA training uses (a bfloat16 or float16 frozen base), checked on the CPU so that CI
/// covers them without a GPU.
/// </summary>
[TestClass]
public sealed class CudaMixedPrecisionCpuTests
{
    [TestMethod]
    [DataRow(ScalarType.BFloat16)]
    [DataRow(ScalarType.Float16)]
    public void BertModel_HalfPrecisionWithPadding_FiniteOutputAndGradients(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        manual_seed(31);
        var model = new BertModel(new BertConfig
        {
            VocabSize = 30, HiddenSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2, IntermediateSize = 32,
            MaxPositionEmbeddings = 8, HiddenDropoutProb = 0, AttentionProbsDropoutProb = 0,
        });
        model.to(dtype);
        var ids = tensor(new long[] { 2, 5, 6, 3, 2, 7, 3, 0 }, 2, 4);
        var mask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 0 }, 2, 4);   // second row padded
        var hidden = model.call(ids, mask, zeros_like(ids));

        Assert.AreEqual(dtype, hidden.dtype);
        // The additive mask must be finite (torch.finfo(dtype).min): −∞ (float.MinValue rounded to bfloat16) gave NaN.
        Assert.IsTrue(hidden.isfinite().all().item<bool>(), "finite hidden states");
        hidden.to(ScalarType.Float32).square().mean().backward();
        foreach (var (name, p) in model.named_parameters())
        {
            Assert.IsNotNull(p.grad, name);
            Assert.IsTrue(p.grad.isfinite().all().item<bool>(), $"{name}: finite gradient");
        }
    }
}
