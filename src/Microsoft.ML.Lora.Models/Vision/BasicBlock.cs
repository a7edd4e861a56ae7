using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// torchvision's <c>BasicBlock</c>: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut being the identity or
/// <c>downsample</c> (1×1 conv → BN). Registered names are torchvision's (<c>conv1</c>, <c>bn1</c>, <c>conv2</c>, <c>bn2</c>,
/// <c>downsample.0</c>, <c>downsample.1</c>); the convolutions are <c>Module&lt;Tensor, Tensor&gt;</c> fields so LoRA
/// injection can swap them.
/// </summary>
internal sealed class BasicBlock : nn.Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> conv1;
    private readonly BatchNorm2d bn1;
    private Module<Tensor, Tensor> conv2;
    private readonly BatchNorm2d bn2;
    private readonly Sequential? downsample;

    public BasicBlock(BasicBlockSpec spec, Device? device) : base(nameof(BasicBlock))
    {
        conv1 = ResNet.CreateConv(spec.Conv1, device);
        bn1 = ResNet.CreateBatchNorm(spec.Bn1, device);
        conv2 = ResNet.CreateConv(spec.Conv2, device);
        bn2 = ResNet.CreateBatchNorm(spec.Bn2, device);
        if (spec.Downsample is { } d)
        {
            downsample = nn.Sequential(("0", ResNet.CreateConv(d.Conv, device)), ("1", ResNet.CreateBatchNorm(d.Bn, device)));
        }

        RegisterComponents();
    }

    private BasicBlock(BasicBlock source) : base(nameof(BasicBlock))
    {
        conv1 = SharedWeights.Conv(source.conv1);
        bn1 = SharedWeights.BatchNorm(source.bn1);
        conv2 = SharedWeights.Conv(source.conv2);
        bn2 = SharedWeights.BatchNorm(source.bn2);
        if (source.downsample is { } d)
        {
            var children = d.children().ToList();
            downsample = nn.Sequential(("0", SharedWeights.Conv((Module<Tensor, Tensor>)children[0])), ("1", SharedWeights.BatchNorm((BatchNorm2d)children[1])));
        }

        RegisterComponents();
    }

    /// <summary>A block of its own over this block's tensors (see <see cref="ResNet.ShareWeights"/>).</summary>
    public BasicBlock ShareWeights() => new(this);

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var identity = downsample is null ? x : downsample.call(x);
        var y = nn.functional.relu(bn1.call(conv1.call(x)), inplace: true);
        y = bn2.call(conv2.call(y));
        return nn.functional.relu(y.add_(identity), inplace: true).MoveToOuterDisposeScope();
    }
}
