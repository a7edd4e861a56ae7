using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Modules;

/// <summary>
/// Convolution with a low-rank update, in one of two factorisations (<see cref="factorization"/>):
/// <see cref="LoraConvFactorization.Loralib"/> (loralib's: ΔW = (B·A).view(W.shape), A [r·k₀, in·k₁⋯], B [out/groups·k₀, r·k₀];
/// forward <c>conv(x, W, b) + conv(dropout(x), B·A viewed as a kernel)·scaling</c>) or
/// <see cref="LoraConvFactorization.Peft"/> (PEFT's: A is a convolution with the base kernel, stride, padding, dilation and
/// groups and r output channels (weight r × in/groups × kernel); B is a 1×…×1 convolution from r to out_channels with the
/// same groups (weight out × r/groups × 1…); forward <c>conv(x, W, b) + conv1x1(conv(dropout(x), A), B)·scaling</c>).
/// </summary>
/// <remarks>
/// <para>With the loralib factorisation, <c>load_state_dict</c> also accepts loralib's duplicated keys <c>conv.weight</c> and
/// <c>conv.bias</c> (loralib's layer registers its inner convolution's tensors under both names); <c>state_dict()</c> writes
/// each tensor once, under <c>weight</c>/<c>bias</c>. Unlike loralib, dropout applies to the LoRA branch's input.</para>
/// <para>PEFT factorisation: grouped convolutions keep their block structure: output channel group g sees only A's group g, which sees only
/// input group g, so ΔW has the base weight's shape and merging is exact. With groups = 1 the tensors are exactly PEFT's
/// <c>lora_A.weight</c> / <c>lora_B.weight</c>. (PEFT's A for groups &gt; 1 is dense over all inputs and cannot be merged.)</para>
/// </remarks>
public abstract class LoraConvNd : LoraLayer
{
    private protected LoraConvNd(string name, int dims, Parameter weight, Parameter? bias, long[] stride, long[] padding,
        long[] dilation, long groups, int r, double lora_alpha, double lora_dropout, bool merge_weights, bool use_rslora,
        LoraInitKind init, string adapter_name, LoraConfig? config, LoraConvFactorization factorization)
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

        if (!Enum.IsDefined(factorization))
        {
            throw new ArgumentOutOfRangeException(nameof(factorization), factorization, "Unknown convolution factorisation.");
        }

        this.factorization = factorization;
        this.dims = dims;
        kernel_size = weight.shape[2..];
        this.stride = (long[])stride.Clone();
        this.padding = (long[])padding.Clone();
        this.dilation = (long[])dilation.Clone();
        this.groups = groups;
        CheckRank(r);

        if (r > 0)
        {
            AddAdapter(adapter_name, r, lora_alpha, lora_dropout, use_rslora, init, config);
            SetActive([adapter_name]);
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

    /// <summary>How ΔW is factored: loralib's reshaped matrix product or PEFT's two convolutions (fixed at construction).</summary>
    public LoraConvFactorization factorization { get; }

    private int dims { get; }

    private protected override Tensor BaseForward(Tensor input) => Convolve(input, weight, bias, stride, padding, dilation);

    private protected override Tensor AdapterForward(Tensor x, Tensor a, Tensor b, int r)
    {
        if (factorization == LoraConvFactorization.Loralib)
        {
            using var product = b.matmul(a);
            using var kernel = product.view(weight.shape);
            return Convolve(x, kernel, null, stride, padding, dilation);
        }

        var ones = Enumerable.Repeat(1L, dims).ToArray();
        using var down = Convolve(x, a, null, stride, padding, dilation);
        return Convolve(down, b, null, ones, new long[dims], ones);
    }

    /// <summary>
    /// loralib's factorisation without dropout: one convolution with the kernel W + Σ scaling·(B·A).view(W.shape), as loralib
    /// computes it (ΔW is as large as W, so this costs one convolution instead of two). Not used for a half-precision base
    /// (the factors stay float32) or the PEFT factorisation.
    /// </summary>
    private protected override Tensor? FusedForward(Tensor input, IReadOnlyList<(Tensor a, Tensor b, double scaling)> adapters)
    {
        if (factorization != LoraConvFactorization.Loralib || adapters.Any(f => f.a.dtype != weight.dtype) || input.dtype != weight.dtype)
        {
            return null;
        }

        using var scope = torch.NewDisposeScope();
        var kernel = weight.alias();
        foreach (var (a, b, scaling) in adapters)
        {
            kernel = kernel.add(b.matmul(a).view(weight.shape), alpha: scaling);
        }

        return Convolve(input, kernel, bias, stride, padding, dilation).MoveToOuterDisposeScope();
    }

    private protected override void CheckRank(int r)
    {
        if (factorization == LoraConvFactorization.Peft && r % groups != 0)
        {
            throw new ArgumentException($"r ({r}) must be divisible by groups ({groups}) so each group gets its own rank-r/groups update.", nameof(r));
        }
    }

    private protected override (Tensor a, Tensor b) CreateFactors(int r, LoraInitKind init)
    {
        var dtype = LoraArguments.FactorDtype(weight.dtype);
        long[] aShape, bShape;
        if (factorization == LoraConvFactorization.Loralib)
        {
            var k0 = kernel_size[0];
            var rest = kernel_size.Skip(1).Aggregate(1L, (p, k) => p * k);
            aShape = [r * k0, in_channels * rest];
            bShape = [out_channels / groups * k0, r * k0];
        }
        else
        {
            aShape = [r, weight.shape[1], .. kernel_size];
            bShape = [out_channels, r / groups, .. Enumerable.Repeat(1L, dims)];
        }

        var a = torch.empty(aShape, dtype: dtype, device: weight.device);
        var b = torch.empty(bShape, dtype: dtype, device: weight.device);
        LoraArguments.InitDown(a, r, init);
        LoraArguments.InitUp(b, init);
        return (a, b);
    }

    /// <summary>
    /// loralib: (B·A).view(W.shape)·scaling. PEFT, per group g: ΔW_g = B_g·A_g, with B_g (out/groups × r/groups) and
    /// A_g (r/groups × in/groups·kernel).
    /// </summary>
    private protected override Tensor DeltaWeight(Tensor a, Tensor b, int r, double scaling)
    {
        if (factorization == LoraConvFactorization.Loralib)
        {
            using var matrix = b.matmul(a);
            return matrix.reshape(weight.shape).mul_(scaling);
        }

        using var bGroups = b.reshape(groups, out_channels / groups, r / groups);
        using var aGroups = a.reshape(groups, r / groups, -1);
        using var product = bGroups.bmm(aGroups);
        return product.reshape(weight.shape).mul_(scaling);
    }

    /// <summary>
    /// Copies parameters and buffers from <paramref name="source"/>, as <c>nn.Module.load_state_dict</c>. With the loralib
    /// factorisation, loralib's duplicated keys <c>conv.weight</c>/<c>conv.bias</c> are read as <c>weight</c>/<c>bias</c>
    /// (when both names are present their values must be equal).
    /// </summary>
    /// <param name="source">Name → tensor.</param>
    /// <param name="strict">Whether every key must match (after the renaming).</param>
    /// <param name="skip">Keys not to load.</param>
    /// <returns>The missing and unexpected keys.</returns>
    /// <exception cref="ArgumentException"><c>conv.weight</c> and <c>weight</c> (or the biases) hold different values.</exception>
    public override (IList<string> missing_keys, IList<string> unexpected_keyes) load_state_dict(Dictionary<string, Tensor> source,
        bool strict = true, IList<string>? skip = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (factorization == LoraConvFactorization.Loralib && (source.ContainsKey("conv.weight") || source.ContainsKey("conv.bias")))
        {
            source = new Dictionary<string, Tensor>(source, StringComparer.Ordinal);
            foreach (var name in new[] { "weight", "bias" })
            {
                if (!source.Remove("conv." + name, out var duplicate))
                {
                    continue;
                }

                if (source.TryGetValue(name, out var own) && !(own.shape.SequenceEqual(duplicate.shape) && own.Equals(duplicate.to(own.dtype, own.device))))
                {
                    throw new ArgumentException($"'conv.{name}' and '{name}' are the same tensor in loralib but differ in this state dict.", nameof(source));
                }

                source[name] = duplicate;
            }
        }

        return base.load_state_dict(source, strict, skip);
    }

    /// <summary>
    /// Output channels are padded to a multiple of this where libtorch's CPU convolutions compute a wrong input gradient.
    /// </summary>
    internal const int CpuOutputChannelBlock = 16;

    private Tensor Convolve(Tensor x, Tensor w, Tensor? b, long[] s, long[] p, long[] d)
    {
        // libtorch 2.10's CPU convolution (oneDNN) computes a wrong input gradient — errors of 25–90 % of the largest
        // value, or NaN — for kernels larger than 1 whose output channels are not a multiple of the kernel's vector block
        // (8 on AVX2, 16 on AVX-512), e.g. PEFT's rank-8 lora_A on a 3×3 convolution (ConvNumericsTests). Where that
        // gradient is needed, the kernel gets zero output channels up to a multiple of 16 and the result is cut back:
        // the same values, the right gradients, for the cost of the extra channels.
        long outChannels = w.shape[0];
        if (groups == 1 && outChannels % CpuOutputChannelBlock != 0 && x.requires_grad && torch.is_grad_enabled()
            && x.device_type == DeviceType.CPU && w.shape.Skip(2).Any(k => k > 1))
        {
            using var scope = torch.NewDisposeScope();
            long padded = (outChannels + CpuOutputChannelBlock - 1) / CpuOutputChannelBlock * CpuOutputChannelBlock;
            var wPadded = torch.cat([w, torch.zeros([padded - outChannels, .. w.shape.Skip(1)], w.dtype, w.device)], 0);
            var bPadded = b is null ? null : torch.cat([b, torch.zeros(padded - outChannels, b.dtype, b.device)], 0);
            return ConvolveDirect(x, wPadded, bPadded, s, p, d).narrow(1, 0, outChannels).MoveToOuterDisposeScope();
        }

        return ConvolveDirect(x, w, b, s, p, d);
    }

    private Tensor ConvolveDirect(Tensor x, Tensor w, Tensor? b, long[] s, long[] p, long[] d) => dims switch
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
