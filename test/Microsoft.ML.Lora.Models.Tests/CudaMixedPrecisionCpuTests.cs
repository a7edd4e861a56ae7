using Microsoft.ML.Lora.Tests;
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

    [TestMethod]
    public void BertForSequenceClassification_Bfloat16EncoderFloat32Head_Float32LogitsAndHeadGradients()
    {
        using var scope = NewDisposeScope();
        manual_seed(32);
        var bert = new BertModel(new BertConfig
        {
            VocabSize = 30, HiddenSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2, IntermediateSize = 32,
            MaxPositionEmbeddings = 8, HiddenDropoutProb = 0, AttentionProbsDropoutProb = 0,
        });
        var model = new BertForSequenceClassification(bert, 3, PoolingMode.Mean, dropout: 0);
        bert.to(ScalarType.BFloat16);   // the frozen encoder in bfloat16, the trainable head stays float32
        var ids = tensor(new long[] { 2, 5, 6, 3, 2, 7, 3, 0 }, 2, 4);
        var mask = tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 0 }, 2, 4);

        var logits = model.call(ids, mask, zeros_like(ids));

        Assert.AreEqual(ScalarType.Float32, logits.dtype, "logits in the head's dtype (float32, as documented)");
        // Same logits as pooling the bfloat16 encoder output, widening it, and applying the head by hand.
        var pooled = Pooling.Pool(bert.call(ids, mask, zeros_like(ids)), mask, PoolingMode.Mean, normalize: false).to(ScalarType.Float32);
        var head = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var expected = nn.functional.linear(pooled, head["classifier.weight"], head["classifier.bias"]);
        Assert.IsTrue(logits.allclose(expected, rtol: 1e-6, atol: 1e-6), "head applied to the widened pooled output");
        nn.functional.cross_entropy(logits, tensor(new long[] { 0, 2 })).backward();
        Assert.AreEqual(ScalarType.Float32, head["classifier.weight"].grad!.dtype);
        Assert.IsTrue(head["classifier.weight"].grad!.isfinite().all().item<bool>());
    }
}
