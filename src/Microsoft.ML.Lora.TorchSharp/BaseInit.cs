using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>Initial values of the base parameters, as torch.nn initialises Linear, Conv and Embedding.</summary>
internal static class BaseInit
{
    internal static (Tensor weight, Tensor? bias) Linear(long in_features, long out_features, bool bias, Device? device, ScalarType? dtype) =>
        KaimingWithBias([out_features, in_features], in_features, bias, device, dtype);

    /// <summary>A linear layer's base as stored: out×in, or in×out (contiguous) when <paramref name="fan_in_fan_out"/>.</summary>
    internal static (Tensor weight, Tensor? bias) Linear(long in_features, long out_features, bool bias, bool fan_in_fan_out, Device? device, ScalarType? dtype)
    {
        var (w, b) = Linear(in_features, out_features, bias, device, dtype);
        if (!fan_in_fan_out)
        {
            return (w, b);
        }

        var transposed = w.t().contiguous();
        w.Dispose();
        return (transposed, b);
    }

    internal static (Tensor weight, Tensor? bias) Conv(long[] weightShape, bool bias, Device? device, ScalarType? dtype)
    {
        long fanIn = 1;
        for (var i = 1; i < weightShape.Length; i++)
        {
            fanIn *= weightShape[i];
        }

        return KaimingWithBias(weightShape, fanIn, bias, device, dtype);
    }

    internal static Tensor Embedding(long num_embeddings, long embedding_dim, long? padding_idx, Device? device, ScalarType? dtype)
    {
        using var noGrad = no_grad();
        var w = empty([num_embeddings, embedding_dim], dtype: dtype, device: device);
        nn.init.normal_(w);
        if (padding_idx is long p)
        {
            w[p].zero_();
        }

        return w;
    }

    private static (Tensor weight, Tensor? bias) KaimingWithBias(long[] shape, long fanIn, bool bias, Device? device, ScalarType? dtype)
    {
        using var noGrad = no_grad();
        var w = empty(shape, dtype: dtype, device: device);
        nn.init.kaiming_uniform_(w, a: Math.Sqrt(5));
        Tensor? b = null;
        if (bias)
        {
            var bound = fanIn > 0 ? 1 / Math.Sqrt(fanIn) : 0;
            b = empty([shape[0]], dtype: dtype, device: device);
            nn.init.uniform_(b, -bound, bound);
        }

        return (w, b);
    }
}
