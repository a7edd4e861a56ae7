using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>Pooling of a last hidden state into sentence vectors.</summary>
public static class Pooling
{
    /// <summary>Reduces token states [B, T, H] to sentence vectors [B, H].</summary>
    /// <param name="hidden">Token states [B, T, H] (e.g. <see cref="BertModel"/>'s output).</param>
    /// <param name="attentionMask">[B, T], 1 for real tokens and 0 for padding; used by <see cref="PoolingMode.Mean"/>.</param>
    /// <param name="mode"><see cref="PoolingMode.Cls"/>: the first token; <see cref="PoolingMode.Mean"/>: mean over tokens whose mask is 1
    /// (a row with no such token gives zeros).</param>
    /// <param name="normalize">Whether to divide each vector by its L2 norm (norms below 1e-12 are clamped to 1e-12).</param>
    /// <returns>[B, H], the dtype of <paramref name="hidden"/>.</returns>
    /// <exception cref="ArgumentException">The shapes do not fit, or <paramref name="mode"/> is not a defined value.</exception>
    public static Tensor Pool(Tensor hidden, Tensor attentionMask, PoolingMode mode, bool normalize)
    {
        ArgumentNullException.ThrowIfNull(hidden);
        ArgumentNullException.ThrowIfNull(attentionMask);
        if (hidden.dim() != 3)
        {
            throw new ArgumentException($"hidden must be 3-D [batch, sequence, hidden], but has shape [{string.Join(", ", hidden.shape)}].", nameof(hidden));
        }

        if (attentionMask.dim() != 2 || attentionMask.shape[0] != hidden.shape[0] || attentionMask.shape[1] != hidden.shape[1])
        {
            throw new ArgumentException(
                $"attentionMask has shape [{string.Join(", ", attentionMask.shape)}], expected [{hidden.shape[0]}, {hidden.shape[1]}] to match hidden.",
                nameof(attentionMask));
        }

        using var scope = NewDisposeScope();
        Tensor pooled = mode switch
        {
            PoolingMode.Cls => hidden.select(1, 0),
            PoolingMode.Mean => MeanPool(hidden, attentionMask),
            _ => throw new ArgumentException($"Unknown pooling mode {mode}; expected Cls or Mean.", nameof(mode)),
        };

        if (normalize)
        {
            pooled = nn.functional.normalize(pooled, 2.0, 1, 1e-12);
        }

        return pooled.contiguous().MoveToOuterDisposeScope();
    }

    private static Tensor MeanPool(Tensor hidden, Tensor attentionMask)
    {
        var weights = attentionMask.to_type(hidden.dtype).unsqueeze(-1);
        var sum = hidden.mul(weights).sum(1);
        var count = weights.sum(1).clamp_min(1e-9);
        return sum.div_(count);
    }
}
