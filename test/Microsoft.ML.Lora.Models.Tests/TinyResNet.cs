using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// A tiny ResNet with seeded random weights and BatchNorm statistics, laid out like the ML.NET export (asymmetric padding
/// of the stride-2 layers): stem 3→8 (3×3, stride 2) and max pool, layer1 one block 8→8, layer2 one block 8→16 with stride
/// 2 and a 1×1 shortcut; 32×32 inputs give a 4×4 last map.
/// </summary>
internal static class TinyResNet
{
    public static ResNet Create(int seed, int numClasses = 3)
    {
        torch.manual_seed(seed);
        using var spec = Spec();
        var model = new ResNet(spec, numClasses, device: null);
        model.eval();
        return model;
    }

    public static Tensor Images(int seed, int count = 4, long side = 32)
    {
        torch.manual_seed(seed);
        return randn(count, 3, side, side);
    }

    private static ResNetSpec Spec()
    {
        long[] down = [1, 1, 0, 0];
        long[] same = [1, 1, 1, 1];
        var stem = Conv(3, 8, 3, 2, down);
        var block1 = new BasicBlockSpec(Conv(8, 8, 3, 1, same), Bn(8), Conv(8, 8, 3, 1, same), Bn(8), null);
        var block2 = new BasicBlockSpec(Conv(8, 16, 3, 2, down), Bn(16), Conv(16, 16, 3, 1, same), Bn(16), (Conv(8, 16, 1, 2, [0, 0, 0, 0]), Bn(16)));
        return new ResNetSpec(stem, Bn(8), new MaxPoolSpec([3, 3], [2, 2], down), [[block1], [block2]], null);
    }

    private static ConvSpec Conv(long input, long output, long k, long stride, long[] pads) =>
        new(randn(output, input, k, k).mul_(1.0 / Math.Sqrt(input * k * k)), null, [stride, stride], pads, [1, 1], 1);

    private static BatchNormSpec Bn(long channels) =>
        new(rand(channels).add_(0.5), randn(channels).mul_(0.1), randn(channels).mul_(0.1), rand(channels).add_(0.5), 1e-5);
}
