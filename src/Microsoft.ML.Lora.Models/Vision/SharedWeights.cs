using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// New convolution and BatchNorm modules whose tensors alias another module's (built on the meta device, so nothing is
/// allocated, then pointed at the source's storage): the building blocks of <see cref="ResNet.ShareWeights"/>.
/// </summary>
internal static class SharedWeights
{
    /// <summary>A Conv2d with the source's hyperparameters whose weight (and bias) alias the source's; frozen.</summary>
    /// <exception cref="InvalidOperationException">The source is not a plain Conv2d (e.g. a LoRA layer).</exception>
    public static Module<Tensor, Tensor> Conv(Module<Tensor, Tensor> module)
    {
        if (module is not Conv2d conv || conv.padding is null)
        {
            throw new InvalidOperationException($"ShareWeights needs plain convolutions; found {module.GetType().Name}.");
        }

        var k = conv.weight!.shape;
        var shared = nn.Conv2d(k[1] * conv.groups, k[0], (k[2], k[3]), stride: (conv.stride[0], conv.stride[1]),
            padding: (conv.padding[0], conv.padding[1]), dilation: (conv.dilation[0], conv.dilation[1]), groups: conv.groups,
            bias: conv.bias is not null, device: META);
        shared.weight = Alias(conv.weight);
        if (conv.bias is not null)
        {
            shared.bias = Alias(conv.bias);
        }

        return shared;
    }

    /// <summary>A BatchNorm2d whose scale, shift and running statistics alias the source's; frozen.</summary>
    public static BatchNorm2d BatchNorm(BatchNorm2d bn)
    {
        var shared = nn.BatchNorm2d(bn.weight!.shape[0], eps: bn.eps, device: META);
        shared.weight = Alias(bn.weight);
        shared.bias = Alias(bn.bias!);
        using (no_grad())
        {
            shared.running_mean = bn.running_mean!.detach();
            shared.running_var = bn.running_var!.detach();
            shared.num_batches_tracked = bn.num_batches_tracked!.detach();
        }

        return shared;
    }

    private static Parameter Alias(Tensor source)
    {
        using var noGrad = no_grad();
        return new Parameter(source.detach(), requires_grad: false);
    }
}
