using Microsoft.ML.Lora.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// A convolution followed by an evaluation-mode BatchNorm, run for inference as one convolution with the BatchNorm folded
/// into its kernel and bias, as ONNX Runtime does: with s = γ / √(running_var + ε), the kernel W' = W·s (per output
/// channel) and the bias b' = (b − running_mean)·s + β. The folded tensors are a cache beside the model, computed from the
/// convolution's current <c>weight</c> (for a LoRA layer: W + ΔW once merged) in float64 and stored in the kernel's dtype;
/// the model's parameters and buffers are never changed, so <c>state_dict()</c>, saved files and training see the
/// unfolded weights.
/// </summary>
/// <remarks>
/// The cache is rebuilt when the convolution module, its weight or bias parameter, a LoRA layer's weight (merge, unmerge,
/// factors changed: <see cref="LoraLayer.WeightVersion"/>), the BatchNorm module, the device or the dtype changed, and
/// dropped by <see cref="Clear"/> (the owning model calls it on <c>train()</c>/<c>eval()</c> and <c>load_state_dict</c>).
/// Values written in place into a plain convolution's kernel or a BatchNorm's parameters or statistics are not seen
/// until then. Thread-safe: concurrent forwards share one cache.
/// </remarks>
internal sealed class ConvBatchNormFold : IDisposable
{
    private readonly object gate = new();
    private FoldKey? key;
    private Tensor? weight;
    private Tensor? bias;

    /// <summary>How many times the folded tensors were computed (tests check that the cache is reused and refreshed).</summary>
    public int FoldCount { get; private set; }

    /// <summary>
    /// <c>bn(conv(x))</c> as one convolution with the folded kernel, or null when the pair cannot be folded: the convolution
    /// is neither a TorchSharp <see cref="TorchSharp.Modules.Conv2d"/> with zero padding nor a LoRA
    /// <see cref="Modules.Conv2d"/> whose forward is its merged weight (<see cref="LoraLayer.ForwardIsMergedBase"/>), or
    /// the BatchNorm is in training mode or keeps no running statistics.
    /// </summary>
    /// <param name="conv">The convolution module (read at each call: LoRA injection may have replaced it).</param>
    /// <param name="bn">The BatchNorm that follows it.</param>
    /// <param name="x">The convolution's input.</param>
    /// <returns>The BatchNorm's output, or null.</returns>
    public Tensor? TryForward(Module<Tensor, Tensor> conv, BatchNorm2d bn, Tensor x)
    {
        if (bn.training || bn.running_mean is null || bn.running_var is null || Geometry(conv) is not { } geometry)
        {
            return null;
        }

        Tensor w, b;
        lock (gate)
        {
            var current = new FoldKey(conv, geometry.Weight, geometry.Bias, geometry.Version, bn, geometry.Weight.device.ToString(), geometry.Weight.dtype);
            if (key is null || !key.Matches(current) || weight is null || weight.IsInvalid)
            {
                Fold(geometry, bn);
                key = current;
                FoldCount++;
            }

            w = weight!;
            b = bias!;
        }

        return nn.functional.conv2d(x, w, b, geometry.Stride, geometry.Padding, geometry.Dilation, geometry.Groups);
    }

    /// <summary>
    /// <c>bn(conv(x))</c>: through the folded kernel when <paramref name="fold"/> is true and the pair can be folded
    /// (<see cref="TryForward"/>), otherwise the two modules one after the other.
    /// </summary>
    /// <param name="conv">The convolution.</param>
    /// <param name="bn">The BatchNorm after it.</param>
    /// <param name="x">The input.</param>
    /// <param name="fold">Whether folding is wanted (the model is inferring).</param>
    /// <returns>The BatchNorm's output.</returns>
    public Tensor Forward(Module<Tensor, Tensor> conv, BatchNorm2d bn, Tensor x, bool fold) =>
        (fold ? TryForward(conv, bn, x) : null) ?? bn.call(conv.call(x));

    /// <summary>Drops the folded tensors; the next <see cref="TryForward"/> computes them again.</summary>
    public void Clear()
    {
        lock (gate)
        {
            weight?.Dispose();
            bias?.Dispose();
            weight = null;
            bias = null;
            key = null;
        }
    }

    /// <summary>Frees the folded tensors.</summary>
    public void Dispose() => Clear();

    private static ConvGeometry? Geometry(Module<Tensor, Tensor> conv)
    {
        switch (conv)
        {
            case TorchSharp.Modules.Conv2d { padding: { } padding } plain when plain.padding_mode == PaddingModes.Zeros && plain.padding_type is null && plain.weight is not null:
                return new ConvGeometry(plain.weight, plain.bias, 0, plain.stride, padding, plain.dilation, plain.groups);
            case Modules.Conv2d adapted when adapted.ForwardIsMergedBase():
                return new ConvGeometry(adapted.weight, adapted.bias, adapted.WeightVersion, adapted.stride, adapted.padding, adapted.dilation, adapted.groups);
            default:
                return null;
        }
    }

    private void Fold(ConvGeometry conv, BatchNorm2d bn)
    {
        weight?.Dispose();
        bias?.Dispose();
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var dtype = conv.Weight.dtype;
        var mean = bn.running_mean!.detach().to(ScalarType.Float64);
        var scale = bn.running_var!.detach().to(ScalarType.Float64).add(bn.eps).rsqrt();
        if (bn.weight is not null)
        {
            scale = scale.mul(bn.weight.detach().to(ScalarType.Float64));
        }

        var shift = conv.Bias is null ? mean.neg() : conv.Bias.detach().to(ScalarType.Float64).sub(mean);
        shift = shift.mul(scale);
        if (bn.bias is not null)
        {
            shift = shift.add(bn.bias.detach().to(ScalarType.Float64));
        }

        var kernel = conv.Weight.detach().to(ScalarType.Float64).mul(scale.reshape(-1, 1, 1, 1));
        weight = kernel.to(dtype).DetachFromDisposeScope();
        bias = shift.to(dtype).DetachFromDisposeScope();
    }

    private sealed record ConvGeometry(Tensor Weight, Tensor? Bias, long Version, long[] Stride, long[] Padding, long[] Dilation, long Groups);

    /// <summary>What the folded tensors were computed from (modules and parameters by reference: a Tensor's Equals compares values).</summary>
    private sealed class FoldKey(object conv, Tensor weight, Tensor? bias, long version, object bn, string device, ScalarType dtype)
    {
        private readonly object conv = conv;
        private readonly Tensor weight = weight;
        private readonly Tensor? bias = bias;
        private readonly long version = version;
        private readonly object bn = bn;
        private readonly string device = device;
        private readonly ScalarType dtype = dtype;

        public bool Matches(FoldKey other) =>
            ReferenceEquals(conv, other.conv) && ReferenceEquals(weight, other.weight) && ReferenceEquals(bias, other.bias)
            && version == other.version && ReferenceEquals(bn, other.bn) && device == other.device && dtype == other.dtype;
    }
}
