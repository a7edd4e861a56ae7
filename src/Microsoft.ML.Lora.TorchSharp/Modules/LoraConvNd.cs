using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Modules;

/// <summary>
/// Convolution with a low-rank update, in PEFT's factorisation: A is a convolution with the base kernel, stride,
/// padding, dilation and groups and r output channels (weight r × in/groups × kernel); B is a 1×…×1 convolution
/// from r to out_channels with the same groups (weight out × r/groups × 1…). Forward:
/// <c>conv(x, W, b) + conv1x1(conv(dropout(x), A), B)·scaling</c>.
/// </summary>
/// <remarks>
/// Grouped convolutions keep their block structure: output channel group g sees only A's group g, which sees only
/// input group g, so ΔW has the base weight's shape and merging is exact. With groups = 1 the tensors are exactly PEFT's
/// <c>lora_A.weight</c> / <c>lora_B.weight</c>. (PEFT's A for groups &gt; 1 is dense over all inputs and cannot be merged.)
/// </remarks>
public abstract class LoraConvNd : LoraLayer
{
    private protected LoraConvNd(string name, int dims, Parameter weight, Parameter? bias, long[] stride, long[] padding,
        long[] dilation, long groups, int r, double lora_alpha, double lora_dropout, bool merge_weights, bool use_rslora,
        LoraInitKind init)
        : base(name, weight, bias, r, lora_alpha, lora_dropout, merge_weights, use_rslora)
    {
        if (weight.dim() != dims + 2)
        {
            throw new ArgumentException($"A {dims}-D convolution weight must have {dims + 2} dimensions, got [{string.Join(", ", weight.shape)}].", nameof(weight));
        }

        CheckLength(stride, dims, nameof(stride));
        CheckLength(padding, dims, nameof(padding));
        CheckLength(dilation, dims, nameof(dilation));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(groups);
        out_channels = weight.shape[0];
        in_channels = weight.shape[1] * groups;
        if (out_channels % groups != 0)
        {
            throw new ArgumentException($"out_channels ({out_channels}) must be divisible by groups ({groups}).", nameof(groups));
        }

        if (r % groups != 0)
        {
            throw new ArgumentException($"r ({r}) must be divisible by groups ({groups}) so each group gets its own rank-r/groups update.", nameof(r));
        }

        this.dims = dims;
        kernel_size = weight.shape[2..];
        this.stride = (long[])stride.Clone();
        this.padding = (long[])padding.Clone();
        this.dilation = (long[])dilation.Clone();
        this.groups = groups;

        if (r > 0)
        {
            var dtype = LoraArguments.FactorDtype(weight.dtype);
            long[] aShape = [r, weight.shape[1], .. kernel_size];
            long[] bShape = [out_channels, r / groups, .. Enumerable.Repeat(1L, dims)];
            var a = torch.empty(aShape, dtype: dtype, device: weight.device);
            var b = torch.empty(bShape, dtype: dtype, device: weight.device);
            LoraArguments.InitDown(a, r, init);
            LoraArguments.InitUp(b, init);
            lora_A = LoraArguments.NewParameter(a);
            lora_B = LoraArguments.NewParameter(b);
        }
    }

    /// <summary>Number of input channels.</summary>
    public long in_channels { get; }

    /// <summary>Number of output channels.</summary>
    public long out_channels { get; }

    /// <summary>Kernel size per spatial dimension.</summary>
    public long[] kernel_size { get; }

    /// <summary>Stride per spatial dimension.</summary>
    public long[] stride { get; }

    /// <summary>Zero padding per spatial dimension (both sides).</summary>
    public long[] padding { get; }

    /// <summary>Dilation per spatial dimension.</summary>
    public long[] dilation { get; }

    /// <summary>Number of blocked connections from input to output channels.</summary>
    public long groups { get; }

    private int dims { get; }

    /// <summary>Applies the convolution to <paramref name="input"/> (N, C_in, …) and returns (N, C_out, …).</summary>
    /// <param name="input">The input tensor.</param>
    /// <returns>The output tensor.</returns>
    public override Tensor forward(Tensor input)
    {
        if (merged)
        {
            RefreshMergedDelta();
        }

        var result = Convolve(input, weight, bias, stride, padding, dilation);
        if (r == 0 || merged)
        {
            return result;
        }

        var x = LoraInput(input); // may be input itself: not disposed here
        var ones = Enumerable.Repeat(1L, dims).ToArray();
        using var down = Convolve(x, lora_A!, null, stride, padding, dilation);
        using var up = Convolve(down, lora_B!, null, ones, new long[dims], ones);
        using var update = up.dtype == result.dtype ? up.alias() : up.to(result.dtype);
        return result.add_(update, alpha: scaling);
    }

    /// <summary>Per group g: ΔW_g = B_g·A_g, with B_g (out/groups × r/groups) and A_g (r/groups × in/groups·kernel).</summary>
    private protected override Tensor DeltaWeight(Tensor a, Tensor b)
    {
        using var bGroups = b.reshape(groups, out_channels / groups, r / groups);
        using var aGroups = a.reshape(groups, r / groups, -1);
        using var product = bGroups.bmm(aGroups);
        return product.reshape(weight.shape).mul_(scaling);
    }

    private Tensor Convolve(Tensor x, Tensor w, Tensor? b, long[] s, long[] p, long[] d) => dims switch
    {
        1 => nn.functional.conv1d(x, w, b, s[0], p[0], d[0], groups),
        2 => nn.functional.conv2d(x, w, b, s, p, d, groups),
        _ => nn.functional.conv3d(x, w, b, s, p, d, groups),
    };

    private static void CheckLength(long[] values, int dims, string name)
    {
        ArgumentNullException.ThrowIfNull(values, name);
        if (values.Length != dims)
        {
            throw new ArgumentException($"{name} must have {dims} value(s), got {values.Length}.", name);
        }
    }
}
