using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>A small CNN for injecting LoRA into Conv1d/Conv2d (grouped too) and one reflect-padded conv LoRA refuses.</summary>
internal sealed class ConvNet : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> conv1;
    private readonly nn.Module<Tensor, Tensor> conv2;
    private readonly nn.Module<Tensor, Tensor> reflect;
    private readonly nn.Module<Tensor, Tensor> temporal;

    public ConvNet() : base(nameof(ConvNet))
    {
        conv1 = nn.Conv2d(3, 4, 3, padding: 1);
        conv2 = nn.Conv2d(4, 4, 3, padding: 1, groups: 2);
        reflect = nn.Conv2d(4, 4, 3, padding: 1, padding_mode: PaddingModes.Reflect);
        temporal = nn.Conv1d(4, 2, 2, stride: 2);
        RegisterComponents();
    }

    public nn.Module<Tensor, Tensor> Conv2 => conv2;

    public override Tensor forward(Tensor x)
    {
        var h = conv2.call(conv1.call(x).relu()).relu();
        h = reflect.call(h);
        return temporal.call(h.flatten(2));
    }
}
