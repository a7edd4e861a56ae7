using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>
/// Training-mode dropout whose backward keeps a one-byte mask instead of a float scale tensor. On the CPU libtorch's
/// dropout multiplies the input by a tensor of 0 and 1/(1-p) in the input's dtype and keeps that tensor for the backward
/// pass (4 bytes an element in float32); this keeps a bool mask (1 byte an element) and a 0-d scale. The mask is drawn
/// as libtorch's dropout draws it (<c>bernoulli_(1-p)</c> into an empty tensor like the input, from the default
/// generator; here the tensor is bool), and the scale is computed by the same division, so the output, the gradient and the random-number state
/// afterwards are those of <c>nn.functional.dropout</c>, bit for bit. On CUDA libtorch's fused dropout already keeps a
/// bool mask (and draws differently), so there this is <c>nn.functional.dropout</c>.
/// </summary>
internal static class ByteMaskDropout
{
    /// <summary>Dropout of <paramref name="input"/> with probability <paramref name="p"/>, as in training mode.</summary>
    /// <param name="input">Any floating tensor.</param>
    /// <param name="p">The probability of an element being zeroed, in [0, 1).</param>
    /// <returns>A new tensor (the input's own handle when <paramref name="p"/> is 0, as libtorch does).</returns>
    internal static Tensor Dropout(Tensor input, double p)
    {
        if (p == 0 || input.device.type != DeviceType.CPU || input.numel() == 0)
        {
            return nn.functional.dropout(input, p, training: true);
        }

        using var mask = DrawMask(input, p);
        using var scale = Scale(input.dtype, input.device, p);
        return Apply(input, mask, scale);
    }

    /// <summary>
    /// The keep-mask libtorch's CPU dropout would draw for a tensor like <paramref name="input"/>, drawn straight into a
    /// bool tensor of the same shape and layout: libtorch's Bernoulli sampler makes the same generator calls and the same
    /// 0/1 values for every dtype, so no float tensor of the input's size is allocated.
    /// </summary>
    internal static Tensor DrawMask(Tensor input, double p) =>
        empty_like(input, dtype: ScalarType.Bool).bernoulli_(1 - p);

    /// <summary>1/(1-p) as a 0-d tensor of <paramref name="dtype"/>, computed as libtorch's dropout computes its scale.</summary>
    internal static Tensor Scale(ScalarType dtype, Device device, double p) =>
        ones(Array.Empty<long>(), dtype: dtype, device: device).div_(1 - p);

    /// <summary>
    /// x·scale·mask, computed in place on the product with the scale. For autograd the product with the 0-d scale keeps
    /// only the scale, and the product with the mask only the mask (neither keeps x, since the scale and the mask need no
    /// gradient).
    /// </summary>
    internal static Tensor Apply(Tensor x, Tensor mask, Tensor scale) => x.mul(scale).mul_(mask);
}
