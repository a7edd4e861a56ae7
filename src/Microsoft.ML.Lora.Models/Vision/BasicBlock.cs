using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// torchvision's <c>BasicBlock</c>: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut being the identity or
/// <c>downsample</c> (1×1 conv → BN). Registered names are torchvision's (<c>conv1</c>, <c>bn1</c>, <c>conv2</c>, <c>bn2</c>,
/// <c>downsample.0</c>, <c>downsample.1</c>); the convolutions are <c>Module&lt;Tensor, Tensor&gt;</c> fields so LoRA
/// injection can swap them. While the model infers (evaluation mode, gradients off) each conv → BN pair runs as one
/// convolution with the BN folded in (<see cref="ConvBatchNormFold"/>).
/// </summary>
internal sealed class BasicBlock : nn.Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> conv1;
    private readonly BatchNorm2d bn1;
    private Module<Tensor, Tensor> conv2;
    private readonly BatchNorm2d bn2;
    private readonly Sequential? downsample;
    private readonly ConvBatchNormFold fold1 = new();
    private readonly ConvBatchNormFold fold2 = new();
    private readonly ConvBatchNormFold foldDownsample = new();

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

    /// <summary>Whether conv → BN pairs are folded while inferring (set by the owning <see cref="ResNet"/>).</summary>
    internal bool FoldBatchNorm { get; set; } = true;

    /// <summary>The folds of this block's pairs (main path, then the shortcut's).</summary>
    internal IEnumerable<ConvBatchNormFold> Folds => [fold1, fold2, foldDownsample];

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        bool fold = FoldBatchNorm && !training && !is_grad_enabled();
        var identity = downsample is null ? x : Shortcut(x, fold);
        var y = nn.functional.relu(fold1.Forward(conv1, bn1, x, fold), inplace: true);
        y = fold2.Forward(conv2, bn2, y, fold);
        return nn.functional.relu(y.add_(identity), inplace: true).MoveToOuterDisposeScope();
    }

    /// <summary>Sets training or evaluation mode and drops the folded kernels (they are computed again when next needed).</summary>
    /// <param name="train">True for training mode.</param>
    public override void train(bool train = true)
    {
        base.train(train);
        ClearFolds();
    }

    internal void ClearFolds()
    {
        foreach (var f in Folds)
        {
            f.Clear();
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            ClearFolds();
        }

        base.Dispose(disposing);
    }

    private Tensor Shortcut(Tensor x, bool fold)
    {
        if (!fold)
        {
            return downsample!.call(x);
        }

        // Read through the Sequential each time: LoRA injection may have replaced its convolution.
        var children = downsample!.named_children().ToDictionary(c => c.name, c => c.module);
        return children["0"] is Module<Tensor, Tensor> conv && children["1"] is BatchNorm2d bn
            ? foldDownsample.Forward(conv, bn, x, fold)
            : downsample.call(x);
    }
}
