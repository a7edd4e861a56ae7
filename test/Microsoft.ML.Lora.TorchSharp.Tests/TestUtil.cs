using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

internal static class TestUtil
{
    /// <summary>max|a − b| / max|b|: a relative error that does not blow up on near-zero entries.</summary>
    internal static double MaxRelativeDifference(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var diff = (actual.to(ScalarType.Float64) - expected.to(ScalarType.Float64)).abs().max().item<double>();
        var scale = expected.to(ScalarType.Float64).abs().max().item<double>();
        return diff / Math.Max(scale, 1e-30);
    }

    internal static double MaxAbsoluteDifference(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        return (actual.to(ScalarType.Float64) - expected.to(ScalarType.Float64)).abs().max().item<double>();
    }

    /// <summary>Gives B random values so ΔW ≠ 0 (B starts at zero).</summary>
    internal static void Randomize(Parameter? p, double std = 0.5)
    {
        ArgumentNullException.ThrowIfNull(p);
        using var noGrad = no_grad();
        nn.init.normal_(p, 0, std);
    }

    /// <summary>A state-dict key of a LoRA factor: one of its dotted segments is lora_A or lora_B.</summary>
    internal static bool IsLoraKey(string key) => key.Split('.').Any(s => s is "lora_A" or "lora_B");

    internal static void AssertExactlyEqual(Tensor actual, Tensor expected, string what)
    {
        CollectionAssert.AreEqual(expected.shape, actual.shape, $"{what}: shape");
        Assert.IsTrue(actual.Equals(expected), $"{what}: expected bit-identical values, max |diff| = {MaxAbsoluteDifference(actual, expected)}");
    }
}
