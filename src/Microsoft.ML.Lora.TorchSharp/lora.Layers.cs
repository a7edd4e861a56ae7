using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

public static partial class lora
{
    /// <summary>
    /// Creates a LoRA embedding (loralib's <c>lora.Embedding</c>): A (r × num_embeddings) starts at zero, B (embedding_dim × r)
    /// normal, so the layer starts equal to the plain embedding. With <paramref name="r"/> 0 it is a plain embedding.
    /// </summary>
    /// <param name="num_embeddings">Size of the dictionary.</param>
    /// <param name="embedding_dim">Size of each embedding vector.</param>
    /// <param name="r">Rank of the update; 0 (default) means no LoRA.</param>
    /// <param name="lora_alpha">α; the update is scaled by α/r (default 1).</param>
    /// <param name="merge_weights">Merge ΔW into the weight on <c>eval()</c> and unmerge on <c>train()</c> (default true).</param>
    /// <param name="padding_idx">Row initialised to zero that receives no gradient (default none).</param>
    /// <param name="use_rslora">Scale by α/√r instead of α/r (default false).</param>
    /// <param name="init_lora_weights">"true" or "gaussian" (A zeros, B normal) or "false" (A normal too).</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Type of the base weight; factors stay float32 for half types.</param>
    /// <returns>The layer, in training mode.</returns>
    /// <exception cref="ArgumentOutOfRangeException">r &lt; 0, lora_alpha ≤ 0, a size ≤ 0 or padding_idx out of range.</exception>
    public static Modules.Embedding Embedding(long num_embeddings, long embedding_dim, int r = 0, double lora_alpha = 1,
        bool merge_weights = true, long? padding_idx = null, bool use_rslora = false, string init_lora_weights = "true",
        Device? device = null, ScalarType? dtype = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(num_embeddings);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(embedding_dim);
        LoraArguments.Check(r, lora_alpha, 0.0);
        var init = LoraArguments.ParseInit(init_lora_weights);
        if (padding_idx is long p && (p < -num_embeddings || p >= num_embeddings))
        {
            throw new ArgumentOutOfRangeException(nameof(padding_idx), p, $"padding_idx must be within [{-num_embeddings}, {num_embeddings}).");
        }

        var normalizedPadding = padding_idx is long q && q < 0 ? q + num_embeddings : padding_idx;
        var w = BaseInit.Embedding(num_embeddings, embedding_dim, normalizedPadding, device, dtype);
        return new Modules.Embedding(LoraArguments.NewParameter(w), r, lora_alpha, merge_weights, normalizedPadding, use_rslora, init);
    }

    /// <summary>
    /// Creates a 1-D LoRA convolution; see <see cref="Modules.LoraConvNd"/>. With <paramref name="r"/> 0 it is a plain convolution.
    /// By default it uses loralib's factorisation, generalised to 1-D kernels larger than 1 (which loralib itself cannot build,
    /// its issue #115): lora_A [r·k, in], lora_B [out/groups·k, r·k]; for k = 1 these are loralib's shapes.
    /// </summary>
    /// <param name="in_channels">Input channels.</param>
    /// <param name="out_channels">Output channels.</param>
    /// <param name="kernel_size">Kernel size.</param>
    /// <param name="r">Rank of the update (default 0); with the PEFT factorisation it must be divisible by <paramref name="groups"/>.</param>
    /// <param name="lora_alpha">α (default 1).</param>
    /// <param name="lora_dropout">Dropout on the LoRA branch input, in [0, 1) (default 0).</param>
    /// <param name="merge_weights">Merge on <c>eval()</c>, unmerge on <c>train()</c> (default true).</param>
    /// <param name="stride">Stride (default 1).</param>
    /// <param name="padding">Zero padding on both sides (default 0).</param>
    /// <param name="dilation">Dilation (default 1).</param>
    /// <param name="groups">Blocked connections from input to output channels (default 1).</param>
    /// <param name="bias">Whether the layer has a bias (default true).</param>
    /// <param name="use_rslora">Scale by α/√r (default false).</param>
    /// <param name="init_lora_weights">"true", "gaussian" or "false".</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Type of the base parameters.</param>
    /// <param name="factorization">How ΔW is factored (default <see cref="LoraConvFactorization.Loralib"/>, loralib's layout and
    /// checkpoints; <see cref="LoraConvFactorization.Peft"/> for PEFT's two convolutions, as injection uses).</param>
    /// <returns>The layer, in training mode.</returns>
    public static Modules.Conv1d Conv1d(long in_channels, long out_channels, long kernel_size, int r = 0, double lora_alpha = 1,
        double lora_dropout = 0, bool merge_weights = true, long stride = 1, long padding = 0, long dilation = 1, long groups = 1,
        bool bias = true, bool use_rslora = false, string init_lora_weights = "true", Device? device = null, ScalarType? dtype = null,
        LoraConvFactorization factorization = LoraConvFactorization.Loralib)
    {
        var (w, b, init) = ConvBase(in_channels, out_channels, [kernel_size], r, lora_alpha, lora_dropout, groups, bias, init_lora_weights, device, dtype);
        return new Modules.Conv1d(w, b, [stride], [padding], [dilation], groups, r, lora_alpha, lora_dropout, merge_weights, use_rslora, init, factorization: factorization);
    }

    /// <summary>
    /// Creates a 2-D LoRA convolution (square kernel) that behaves as loralib's <c>lora.Conv2d</c> by default: lora_A
    /// [r·k, in·k], lora_B [out/groups·k, r·k], ΔW = (lora_B·lora_A).view(weight.shape)·α/r, and loralib's checkpoints (with
    /// their duplicated <c>conv.weight</c>/<c>conv.bias</c> keys) load; see <see cref="Modules.LoraConvNd"/>.
    /// </summary>
    /// <param name="in_channels">Input channels.</param>
    /// <param name="out_channels">Output channels.</param>
    /// <param name="kernel_size">Kernel size in both dimensions.</param>
    /// <param name="r">Rank of the update (default 0); with the PEFT factorisation it must be divisible by <paramref name="groups"/>.</param>
    /// <param name="lora_alpha">α (default 1).</param>
    /// <param name="lora_dropout">Dropout on the LoRA branch input, in [0, 1) (default 0).</param>
    /// <param name="merge_weights">Merge on <c>eval()</c>, unmerge on <c>train()</c> (default true).</param>
    /// <param name="stride">Stride (default 1).</param>
    /// <param name="padding">Zero padding on both sides (default 0).</param>
    /// <param name="dilation">Dilation (default 1).</param>
    /// <param name="groups">Blocked connections from input to output channels (default 1).</param>
    /// <param name="bias">Whether the layer has a bias (default true).</param>
    /// <param name="use_rslora">Scale by α/√r (default false).</param>
    /// <param name="init_lora_weights">"true", "gaussian" or "false".</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Type of the base parameters.</param>
    /// <param name="factorization">How ΔW is factored (default <see cref="LoraConvFactorization.Loralib"/>, loralib's layout and
    /// checkpoints; <see cref="LoraConvFactorization.Peft"/> for PEFT's two convolutions, as injection uses).</param>
    /// <returns>The layer, in training mode.</returns>
    public static Modules.Conv2d Conv2d(long in_channels, long out_channels, long kernel_size, int r = 0, double lora_alpha = 1,
        double lora_dropout = 0, bool merge_weights = true, long stride = 1, long padding = 0, long dilation = 1, long groups = 1,
        bool bias = true, bool use_rslora = false, string init_lora_weights = "true", Device? device = null, ScalarType? dtype = null,
        LoraConvFactorization factorization = LoraConvFactorization.Loralib)
    {
        var (w, b, init) = ConvBase(in_channels, out_channels, [kernel_size, kernel_size], r, lora_alpha, lora_dropout, groups, bias, init_lora_weights, device, dtype);
        return new Modules.Conv2d(w, b, [stride, stride], [padding, padding], [dilation, dilation], groups, r, lora_alpha, lora_dropout, merge_weights, use_rslora, init, factorization: factorization);
    }

    /// <summary>
    /// Creates a 3-D LoRA convolution (cubic kernel); see <see cref="Modules.LoraConvNd"/>. By default it uses loralib's
    /// factorisation generalised to 3-D kernels (loralib's own cannot build them for k &gt; 1, its issue #115): lora_A
    /// [r·k, in·k·k], lora_B [out/groups·k, r·k].
    /// </summary>
    /// <param name="in_channels">Input channels.</param>
    /// <param name="out_channels">Output channels.</param>
    /// <param name="kernel_size">Kernel size in all three dimensions.</param>
    /// <param name="r">Rank of the update (default 0); with the PEFT factorisation it must be divisible by <paramref name="groups"/>.</param>
    /// <param name="lora_alpha">α (default 1).</param>
    /// <param name="lora_dropout">Dropout on the LoRA branch input, in [0, 1) (default 0).</param>
    /// <param name="merge_weights">Merge on <c>eval()</c>, unmerge on <c>train()</c> (default true).</param>
    /// <param name="stride">Stride (default 1).</param>
    /// <param name="padding">Zero padding on both sides (default 0).</param>
    /// <param name="dilation">Dilation (default 1).</param>
    /// <param name="groups">Blocked connections from input to output channels (default 1).</param>
    /// <param name="bias">Whether the layer has a bias (default true).</param>
    /// <param name="use_rslora">Scale by α/√r (default false).</param>
    /// <param name="init_lora_weights">"true", "gaussian" or "false".</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Type of the base parameters.</param>
    /// <param name="factorization">How ΔW is factored (default <see cref="LoraConvFactorization.Loralib"/>, loralib's layout and
    /// checkpoints; <see cref="LoraConvFactorization.Peft"/> for PEFT's two convolutions, as injection uses).</param>
    /// <returns>The layer, in training mode.</returns>
    public static Modules.Conv3d Conv3d(long in_channels, long out_channels, long kernel_size, int r = 0, double lora_alpha = 1,
        double lora_dropout = 0, bool merge_weights = true, long stride = 1, long padding = 0, long dilation = 1, long groups = 1,
        bool bias = true, bool use_rslora = false, string init_lora_weights = "true", Device? device = null, ScalarType? dtype = null,
        LoraConvFactorization factorization = LoraConvFactorization.Loralib)
    {
        var (w, b, init) = ConvBase(in_channels, out_channels, [kernel_size, kernel_size, kernel_size], r, lora_alpha, lora_dropout, groups, bias, init_lora_weights, device, dtype);
        return new Modules.Conv3d(w, b, [stride, stride, stride], [padding, padding, padding], [dilation, dilation, dilation], groups, r, lora_alpha, lora_dropout, merge_weights, use_rslora, init, factorization: factorization);
    }

    private static (TorchSharp.Modules.Parameter weight, TorchSharp.Modules.Parameter? bias, LoraInitKind init) ConvBase(long in_channels,
        long out_channels, long[] kernel_size, int r, double lora_alpha, double lora_dropout, long groups, bool bias,
        string init_lora_weights, Device? device, ScalarType? dtype)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(in_channels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(out_channels);
        foreach (var k in kernel_size)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k, nameof(kernel_size));
        }

        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(groups);
        LoraArguments.Check(r, lora_alpha, lora_dropout);
        if (in_channels % groups != 0)
        {
            throw new ArgumentException($"in_channels ({in_channels}) must be divisible by groups ({groups}).", nameof(in_channels));
        }

        var init = LoraArguments.ParseInit(init_lora_weights);
        long[] shape = [out_channels, in_channels / groups, .. kernel_size];
        var (w, b) = BaseInit.Conv(shape, bias, device, dtype);
        return (LoraArguments.NewParameter(w), b is null ? null : LoraArguments.NewParameter(b), init);
    }

    /// <summary>
    /// Creates a linear layer whose output splits into <c>enable_lora.Length</c> equal groups, with LoRA on the enabled
    /// ones (loralib's <c>lora.MergedLinear</c>, e.g. a fused qkv projection with <c>enable_lora = [true, false, true]</c>).
    /// </summary>
    /// <param name="in_features">Size of each input sample.</param>
    /// <param name="out_features">Size of each output sample; must be divisible by <c>enable_lora.Length</c>.</param>
    /// <param name="r">Rank of each group's update; 0 (default) means no LoRA.</param>
    /// <param name="lora_alpha">α (default 1).</param>
    /// <param name="lora_dropout">Dropout on the LoRA branch input, in [0, 1) (default 0).</param>
    /// <param name="enable_lora">One flag per output group (default: a single disabled group, as loralib).</param>
    /// <param name="fan_in_fan_out">Store the weight as (in × out) (default false).</param>
    /// <param name="merge_weights">Merge on <c>eval()</c>, unmerge on <c>train()</c> (default true).</param>
    /// <param name="bias">Whether the layer has a bias (default true).</param>
    /// <param name="use_rslora">Scale by α/√r (default false).</param>
    /// <param name="init_lora_weights">"true", "gaussian" or "false".</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Type of the base parameters.</param>
    /// <returns>The layer, in training mode.</returns>
    /// <exception cref="ArgumentException">enable_lora does not divide out_features, or r &gt; 0 and no group is enabled.</exception>
    public static Modules.MergedLinear MergedLinear(long in_features, long out_features, int r = 0, double lora_alpha = 1,
        double lora_dropout = 0, bool[]? enable_lora = null, bool fan_in_fan_out = false, bool merge_weights = true,
        bool bias = true, bool use_rslora = false, string init_lora_weights = "true", Device? device = null, ScalarType? dtype = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(in_features);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(out_features);
        LoraArguments.Check(r, lora_alpha, lora_dropout);
        enable_lora ??= [false];
        Modules.MergedLinear.CheckGroups(out_features, r, enable_lora);
        var init = LoraArguments.ParseInit(init_lora_weights);
        var (w, b) = BaseInit.Linear(in_features, out_features, bias, fan_in_fan_out, device, dtype);

        return new Modules.MergedLinear(LoraArguments.NewParameter(w), b is null ? null : LoraArguments.NewParameter(b),
            r, lora_alpha, lora_dropout, enable_lora, fan_in_fan_out, merge_weights, use_rslora, init);
    }

    /// <summary>Creates a 2-D LoRA convolution with per-dimension sizes, as TorchSharp's tuple overload of <c>nn.Conv2d</c>.</summary>
    /// <param name="in_channels">Input channels.</param>
    /// <param name="out_channels">Output channels.</param>
    /// <param name="kernel_size">Kernel size (height, width).</param>
    /// <param name="r">Rank of the update (default 0); with the PEFT factorisation it must be divisible by <paramref name="groups"/>.</param>
    /// <param name="lora_alpha">α (default 1).</param>
    /// <param name="lora_dropout">Dropout on the LoRA branch input, in [0, 1) (default 0).</param>
    /// <param name="merge_weights">Merge on <c>eval()</c>, unmerge on <c>train()</c> (default true).</param>
    /// <param name="stride">Stride (default (1, 1)).</param>
    /// <param name="padding">Zero padding (default (0, 0)).</param>
    /// <param name="dilation">Dilation (default (1, 1)).</param>
    /// <param name="groups">Blocked connections from input to output channels (default 1).</param>
    /// <param name="bias">Whether the layer has a bias (default true).</param>
    /// <param name="use_rslora">Scale by α/√r (default false).</param>
    /// <param name="init_lora_weights">"true", "gaussian" or "false".</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Type of the base parameters.</param>
    /// <param name="factorization">How ΔW is factored (default <see cref="LoraConvFactorization.Loralib"/>, loralib's layout and
    /// checkpoints; <see cref="LoraConvFactorization.Peft"/> for PEFT's two convolutions, as injection uses).</param>
    /// <returns>The layer, in training mode.</returns>
    public static Modules.Conv2d Conv2d(long in_channels, long out_channels, (long, long) kernel_size, int r = 0, double lora_alpha = 1,
        double lora_dropout = 0, bool merge_weights = true, (long, long)? stride = null, (long, long)? padding = null,
        (long, long)? dilation = null, long groups = 1, bool bias = true, bool use_rslora = false, string init_lora_weights = "true",
        Device? device = null, ScalarType? dtype = null, LoraConvFactorization factorization = LoraConvFactorization.Loralib)
    {
        var (w, b, init) = ConvBase(in_channels, out_channels, [kernel_size.Item1, kernel_size.Item2], r, lora_alpha, lora_dropout, groups, bias, init_lora_weights, device, dtype);
        var s = stride ?? (1, 1);
        var p = padding ?? (0, 0);
        var d = dilation ?? (1, 1);
        return new Modules.Conv2d(w, b, [s.Item1, s.Item2], [p.Item1, p.Item2], [d.Item1, d.Item2], groups, r, lora_alpha, lora_dropout, merge_weights, use_rslora, init, factorization: factorization);
    }

    /// <summary>Creates a 3-D LoRA convolution with per-dimension sizes, as TorchSharp's tuple overload of <c>nn.Conv3d</c>.</summary>
    /// <param name="in_channels">Input channels.</param>
    /// <param name="out_channels">Output channels.</param>
    /// <param name="kernel_size">Kernel size (depth, height, width).</param>
    /// <param name="r">Rank of the update (default 0); with the PEFT factorisation it must be divisible by <paramref name="groups"/>.</param>
    /// <param name="lora_alpha">α (default 1).</param>
    /// <param name="lora_dropout">Dropout on the LoRA branch input, in [0, 1) (default 0).</param>
    /// <param name="merge_weights">Merge on <c>eval()</c>, unmerge on <c>train()</c> (default true).</param>
    /// <param name="stride">Stride (default (1, 1, 1)).</param>
    /// <param name="padding">Zero padding (default (0, 0, 0)).</param>
    /// <param name="dilation">Dilation (default (1, 1, 1)).</param>
    /// <param name="groups">Blocked connections from input to output channels (default 1).</param>
    /// <param name="bias">Whether the layer has a bias (default true).</param>
    /// <param name="use_rslora">Scale by α/√r (default false).</param>
    /// <param name="init_lora_weights">"true", "gaussian" or "false".</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Type of the base parameters.</param>
    /// <param name="factorization">How ΔW is factored (default <see cref="LoraConvFactorization.Loralib"/>, loralib's layout and
    /// checkpoints; <see cref="LoraConvFactorization.Peft"/> for PEFT's two convolutions, as injection uses).</param>
    /// <returns>The layer, in training mode.</returns>
    public static Modules.Conv3d Conv3d(long in_channels, long out_channels, (long, long, long) kernel_size, int r = 0, double lora_alpha = 1,
        double lora_dropout = 0, bool merge_weights = true, (long, long, long)? stride = null, (long, long, long)? padding = null,
        (long, long, long)? dilation = null, long groups = 1, bool bias = true, bool use_rslora = false, string init_lora_weights = "true",
        Device? device = null, ScalarType? dtype = null, LoraConvFactorization factorization = LoraConvFactorization.Loralib)
    {
        var (w, b, init) = ConvBase(in_channels, out_channels, [kernel_size.Item1, kernel_size.Item2, kernel_size.Item3], r, lora_alpha, lora_dropout, groups, bias, init_lora_weights, device, dtype);
        var s = stride ?? (1, 1, 1);
        var p = padding ?? (0, 0, 0);
        var d = dilation ?? (1, 1, 1);
        return new Modules.Conv3d(w, b, [s.Item1, s.Item2, s.Item3], [p.Item1, p.Item2, p.Item3], [d.Item1, d.Item2, d.Item3], groups, r, lora_alpha, lora_dropout, merge_weights, use_rslora, init, factorization: factorization);
    }
}
