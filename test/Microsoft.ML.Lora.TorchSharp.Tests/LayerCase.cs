using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using LoraLayer = Microsoft.ML.Lora.Modules.LoraLayer;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// One LoRA layer of each kind with a matching plain TorchSharp layer and an input, so that the properties every
/// LoRA layer must have are tested once for all kinds.
/// </summary>
internal sealed record LayerCase(LoraLayer Layer, Func<Tensor> Input, Func<nn.Module<Tensor, Tensor>> PlainBase)
{
    internal static readonly string[] Kinds = ["Linear", "Embedding", "Conv1d", "Conv2dGroups", "Conv3dGroups", "MergedLinear"];

    internal static LayerCase Create(string kind, double lora_dropout = 0, bool merge_weights = true, ScalarType? dtype = null)
    {
        switch (kind)
        {
            case "Linear":
            {
                var layer = lora.Linear(6, 5, r: 2, lora_alpha: 4, lora_dropout: lora_dropout, merge_weights: merge_weights, dtype: dtype);
                return new LayerCase(layer, () => randn(3, 6), () => CopyInto(nn.Linear(6, 5), layer));
            }

            case "Embedding":
            {
                var layer = lora.Embedding(10, 4, r: 2, lora_alpha: 2, merge_weights: merge_weights, dtype: dtype);
                return new LayerCase(layer, () => tensor(new long[] { 1, 2, 3, 9, 0, 4 }, 2, 3),
                    () => CopyInto(nn.Embedding(10, 4), layer));
            }

            case "Conv1d":
            {
                var layer = lora.Conv1d(4, 6, 3, r: 2, lora_alpha: 2, lora_dropout: lora_dropout, merge_weights: merge_weights,
                    stride: 2, padding: 1, dtype: dtype);
                return new LayerCase(layer, () => randn(2, 4, 9),
                    () => CopyInto(nn.Conv1d(4, 6, 3, stride: 2, padding: 1), layer));
            }

            case "Conv2dGroups":
            {
                var layer = lora.Conv2d(4, 6, 3, r: 4, lora_alpha: 8, lora_dropout: lora_dropout, merge_weights: merge_weights,
                    padding: 1, dilation: 2, groups: 2, dtype: dtype);
                return new LayerCase(layer, () => randn(2, 4, 7, 7),
                    () => CopyInto(nn.Conv2d(4, 6, 3, padding: 1, dilation: 2, groups: 2), layer));
            }

            case "Conv3dGroups":
            {
                var layer = lora.Conv3d(4, 4, 2, r: 2, lora_alpha: 2, lora_dropout: lora_dropout, merge_weights: merge_weights,
                    groups: 2, dtype: dtype);
                return new LayerCase(layer, () => randn([1, 4, 4, 4, 4]),
                    () => CopyInto(nn.Conv3d(4, 4, 2, groups: 2), layer));
            }

            case "MergedLinear":
            {
                var layer = lora.MergedLinear(6, 9, r: 2, lora_alpha: 4, lora_dropout: lora_dropout, enable_lora: [true, false, true],
                    merge_weights: merge_weights, dtype: dtype);
                return new LayerCase(layer, () => randn(3, 6), () => CopyInto(nn.Linear(6, 9), layer));
            }

            default:
                throw new ArgumentException($"unknown kind {kind}", nameof(kind));
        }
    }

    /// <summary>Gives both factors random values so that ΔW ≠ 0 and both get gradients.</summary>
    internal void RandomizeFactors()
    {
        TestUtil.Randomize(Layer.lora_A);
        TestUtil.Randomize(Layer.lora_B);
    }

    private static nn.Module<Tensor, Tensor> CopyInto(nn.Module<Tensor, Tensor> plain, LoraLayer layer)
    {
        using var noGrad = no_grad();
        var parameters = plain.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        parameters["weight"].copy_(layer.weight);
        if (layer.bias is not null)
        {
            parameters["bias"].copy_(layer.bias);
        }

        return plain;
    }
}
