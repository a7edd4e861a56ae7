using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// A 2-D convolution as an ONNX graph states it: weight [out, in/groups, kH, kW], optional bias, strides, dilations, group
/// count and padding per side (ONNX order: begin of H, begin of W, end of H, end of W; CNTK exports pad asymmetrically).
/// </summary>
internal sealed record ConvSpec(Tensor Weight, Tensor? Bias, long[] Stride, long[] Pads, long[] Dilation, long Groups)
{
    public long OutChannels => Weight.shape[0];

    public long InChannels => Weight.shape[1] * Groups;

    /// <summary>
    /// Symmetric padding per spatial dimension: the larger of the two sides (torchvision's padding). CNTK exports pad stride-2
    /// layers one less at the end ([1, 1, 0, 0] for 3×3, [3, 3, 2, 2] for the 7×7 stem); on an even-sized input the last
    /// window never reaches the end padding, so the two agree there (224 and every multiple of 32), and on odd sizes the
    /// symmetric form keeps the main path and the 1×1 shortcut the same size where the graph's own padding would not.
    /// </summary>
    public long[] SymmetricPadding => [Math.Max(Pads[0], Pads[2]), Math.Max(Pads[1], Pads[3])];
}

/// <summary>Inference-mode batch normalisation: y = (x − mean)/√(var + ε)·scale + bias, per channel.</summary>
internal sealed record BatchNormSpec(Tensor Scale, Tensor Bias, Tensor Mean, Tensor Variance, double Epsilon);

/// <summary>conv → BN → ReLU → conv → BN, + shortcut (identity, or 1×1 conv → BN when the shape changes), → ReLU.</summary>
internal sealed record BasicBlockSpec(ConvSpec Conv1, BatchNormSpec Bn1, ConvSpec Conv2, BatchNormSpec Bn2,
    (ConvSpec Conv, BatchNormSpec Bn)? Downsample);

/// <summary>Max pooling with ONNX padding per side (applied as the symmetric padding, see <see cref="ConvSpec.SymmetricPadding"/>).</summary>
internal sealed record MaxPoolSpec(long[] Kernel, long[] Stride, long[] Pads);

/// <summary>
/// A ResNet with basic blocks as read from a graph: stem (conv, BN, ReLU, max pool), stages of blocks, global average
/// pooling. <paramref name="FinalPoolKernel"/> is the fixed average-pool window of the export (null for a global pool).
/// </summary>
internal sealed record ResNetSpec(ConvSpec Conv1, BatchNormSpec Bn1, MaxPoolSpec MaxPool, IReadOnlyList<IReadOnlyList<BasicBlockSpec>> Stages,
    long[]? FinalPoolKernel) : IDisposable
{
    public IEnumerable<Tensor> Tensors()
    {
        IEnumerable<Tensor> Conv(ConvSpec c) => c.Bias is null ? [c.Weight] : [c.Weight, c.Bias];
        IEnumerable<Tensor> Bn(BatchNormSpec b) => [b.Scale, b.Bias, b.Mean, b.Variance];
        var all = Conv(Conv1).Concat(Bn(Bn1));
        foreach (var block in Stages.SelectMany(s => s))
        {
            all = all.Concat(Conv(block.Conv1)).Concat(Bn(block.Bn1)).Concat(Conv(block.Conv2)).Concat(Bn(block.Bn2));
            if (block.Downsample is { } d)
            {
                all = all.Concat(Conv(d.Conv)).Concat(Bn(d.Bn));
            }
        }

        return all;
    }

    public void Dispose()
    {
        foreach (var t in Tensors())
        {
            t.Dispose();
        }
    }
}
