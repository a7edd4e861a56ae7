using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// A ResNet with basic blocks (ResNet-18/34 layout) in TorchSharp, with torchvision's module names: <c>conv1</c>, <c>bn1</c>,
/// <c>layer1.0.conv1</c> … <c>layer4.1.bn2</c>, <c>layer2.0.downsample.0</c> (1×1 conv) / <c>.1</c> (BN), and an optional
/// linear head <c>fc</c>. The block counts come from the imported graph (the ML.NET ResNet-18, a CNTK model, has
/// [2, 2, 2, 3] blocks, so it also has <c>layer4.2</c>). So <c>state_dict()</c> keys are torchvision's and LoRA targets read like PEFT's
/// (<c>target_modules = ["conv1", "conv2"]</c>, or a regex such as <c>layer[34]\.\d+\.conv\d</c>).
/// </summary>
/// <remarks>
/// <para><b>Input</b>: [N, 3, H, W] float32, already normalised the way the weights expect (for the ML.NET ResNet-18, see
/// <see cref="ImageNormalization"/>: BGR channel order, 0–255 pixel values minus a mean image). Any batch size.</para>
/// <para><b>Pooling</b>: the features are a global (adaptive) average over the last feature map. An ONNX export built for a
/// fixed size ends in a fixed window instead (the ML.NET ResNet-18: a 7×7 average over the 7×7 map of a 224×224 image);
/// at <see cref="NativeImageSize"/> the two are the same, and at other sizes the global pool is what makes the model
/// usable (the ONNX graph itself only runs at its native size).</para>
/// <para><b>Batch normalisation</b> always uses the stored running statistics while <see cref="FreezeBatchNorm"/> is true
/// (the default): <c>train()</c> puts every BatchNorm2d back in evaluation mode, and their affine parameters start with
/// <c>requires_grad = false</c>. LoRA fine-tuning keeps the base fixed, and batch statistics of small fine-tuning batches
/// would both change the base (running buffers) and make a row's output depend on its batch; evaluation-mode BN is also
/// the same per-channel affine map that merging ΔW into the kernel leaves exact.</para>
/// <para><b>Padding</b> is symmetric, as torchvision's. CNTK exports pad stride-2 layers one less at the end (1 before,
/// 0 after for 3×3 kernels); on even-sized layer inputs the last window never reaches that side, so the result equals the
/// graph at 224×224 and every multiple of 32. At other sizes the graph's own padding would make the main path and the
/// shortcut of a stride-2 block differ in size (at 112×112, 3 against 4 in the last stage); the symmetric form does not.</para>
/// </remarks>
public sealed class ResNet : nn.Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> conv1;
    private readonly BatchNorm2d bn1;
    private readonly MaxPoolSpecValues maxpool;
    private readonly List<Sequential> stages = [];
    private Module<Tensor, Tensor>? fc;
    private readonly ConvBatchNormFold stemFold = new();
    private bool foldBatchNorm = true;

    internal ResNet(ResNetSpec spec, int numClasses, Device? device) : base(nameof(ResNet))
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentOutOfRangeException.ThrowIfNegative(numClasses);
        conv1 = CreateConv(spec.Conv1, device);
        bn1 = CreateBatchNorm(spec.Bn1, device);
        maxpool = new MaxPoolSpecValues(spec.MaxPool);
        register_module(nameof(conv1), conv1);
        register_module(nameof(bn1), bn1);
        long stride = spec.Conv1.Stride[0] * spec.MaxPool.Stride[0];
        long channels = spec.Conv1.OutChannels;
        for (int i = 0; i < spec.Stages.Count; i++)
        {
            var blocks = spec.Stages[i].Select((b, j) => ($"{j}", (nn.Module<Tensor, Tensor>)new BasicBlock(b, device))).ToArray();
            var stage = nn.Sequential(blocks);
            stages.Add(stage);
            register_module($"layer{i + 1}", stage);
            stride *= spec.Stages[i][0].Conv1.Stride[0];
            channels = spec.Stages[i][^1].Conv2.OutChannels;
        }

        FeatureSize = channels;
        TotalStride = stride;
        NativeImageSize = spec.FinalPoolKernel is { } k ? k[0] * stride : null;
        if (numClasses > 0)
        {
            fc = nn.Linear(channels, numClasses, device: device);
            NumClasses = numClasses;
            register_module(nameof(fc), fc);
        }
    }

    /// <summary>A tree of its own over the tensors of <paramref name="source"/> (see <see cref="ShareWeights"/>).</summary>
    private ResNet(ResNet source, int numClasses) : base(nameof(ResNet))
    {
        conv1 = SharedWeights.Conv(source.conv1);
        bn1 = SharedWeights.BatchNorm(source.bn1);
        maxpool = source.maxpool;
        register_module(nameof(conv1), conv1);
        register_module(nameof(bn1), bn1);
        for (int i = 0; i < source.stages.Count; i++)
        {
            var blocks = source.stages[i].children().Select((b, j) => ($"{j}", (nn.Module<Tensor, Tensor>)((BasicBlock)b).ShareWeights())).ToArray();
            var stage = nn.Sequential(blocks);
            stages.Add(stage);
            register_module($"layer{i + 1}", stage);
        }

        FeatureSize = source.FeatureSize;
        TotalStride = source.TotalStride;
        NativeImageSize = source.NativeImageSize;
        FreezeBatchNorm = source.FreezeBatchNorm;
        if (numClasses > 0)
        {
            fc = nn.Linear(FeatureSize, numClasses, device: source.conv1 is Conv2d c ? c.weight!.device : null);
            NumClasses = numClasses;
            register_module(nameof(fc), fc);
        }
    }

    /// <summary>Length of the pooled feature vector (512 for ResNet-18).</summary>
    public long FeatureSize { get; }

    /// <summary>Number of classes of the head <c>fc</c>, or 0 when the model has no head (it returns the features).</summary>
    public long NumClasses { get; }

    /// <summary>Downsampling factor from the input to the last feature map (32 for ResNet-18).</summary>
    public long TotalStride { get; }

    /// <summary>
    /// The image side the imported graph was built for (224 for the ML.NET ResNet-18: its final 7×7 average pool times the
    /// total stride 32), or null when the graph pools globally. Other sizes work here (global pooling); inputs should be
    /// multiples of <see cref="TotalStride"/>.
    /// </summary>
    public long? NativeImageSize { get; }

    /// <summary>
    /// Whether BatchNorm layers stay in evaluation mode (stored statistics) when the model is put in training mode. Default true.
    /// </summary>
    public bool FreezeBatchNorm { get; set; } = true;

    /// <summary>
    /// Whether inference folds each BatchNorm into the convolution before it (default true): in evaluation mode with
    /// gradients off, every conv → BN pair runs as one convolution with kernel W·s and bias (b − μ)·s + β, where
    /// s = γ / √(σ² + ε) (ONNX Runtime does the same). A LoRA convolution is folded only while its update is merged into
    /// its kernel (<c>eval()</c> with <c>merge_weights</c>); an unmerged one runs as before, its BN separately.
    /// </summary>
    /// <remarks>
    /// The folded kernels are a cache beside the model (one more copy of the folded convolutions' weights, 63 MB for the
    /// ML.NET ResNet-18), computed on the first inference after <c>eval()</c> from the current, merged weights; parameters
    /// and buffers are never changed, so <c>state_dict()</c>, saved files and adapters are the same with or without it,
    /// and training mode never uses it. It is computed again after <c>train()</c>/<c>eval()</c>, <c>load_state_dict</c>, a
    /// LoRA layer's merge, unmerge or changed factors, a replaced module or parameter, or a move to another device or
    /// dtype. Values written in place into a base convolution's kernel or a BatchNorm's parameters or statistics while in
    /// evaluation mode are seen after the next <c>eval()</c>.
    /// </remarks>
    public bool FoldBatchNorm
    {
        get => foldBatchNorm;
        set
        {
            foldBatchNorm = value;
            foreach (var block in Blocks)
            {
                block.FoldBatchNorm = value;
            }

            ClearFolds();
        }
    }

    /// <summary>The residual blocks, stage by stage.</summary>
    private IEnumerable<BasicBlock> Blocks => modules().OfType<BasicBlock>();

    /// <summary>Every conv → BN fold of the model (stem first), for tests.</summary>
    internal IEnumerable<ConvBatchNormFold> Folds => Blocks.SelectMany(b => b.Folds).Prepend(stemFold);

    /// <summary>
    /// Imports a ResNet with basic blocks (ResNet-18/34) from an ONNX file, e.g. the ML.NET ResNet-18
    /// (<see cref="DnnImageModels.ResNet18Path"/>). Weights are mapped by walking the graph from its input (initialiser names
    /// are not needed). The model is returned in evaluation mode, on <paramref name="device"/> (default CPU), in float32.
    /// </summary>
    /// <param name="path">The .onnx file.</param>
    /// <param name="numClasses">When positive, adds a linear head <c>fc</c> (features → classes, PyTorch's default
    /// initialisation from the current seed); 0 (default) returns the pooled features.</param>
    /// <param name="device">Where to put the model; default CPU.</param>
    /// <returns>The model.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not ONNX, or its graph is not a ResNet of basic blocks (the
    /// message names the node where the walk stopped).</exception>
    public static ResNet FromOnnx(string path, int numClasses = 0, Device? device = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentOutOfRangeException.ThrowIfNegative(numClasses);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"ONNX model '{path}' does not exist.", path);
        }

        using var stream = File.OpenRead(path);
        using var spec = Onnx.OnnxResNetImporter.Import(stream, path, Path.GetDirectoryName(Path.GetFullPath(path)));
        var model = new ResNet(spec, numClasses, device);
        model.eval();
        return model;
    }

    /// <summary>
    /// A model of its own over this model's tensors: every convolution and BatchNorm of the new tree aliases this one's
    /// weights and statistics (no copy), so many models (each with its own LoRA layers and head) hold one base in memory;
    /// none may change the shared tensors. With <paramref name="numClasses"/> &gt; 0 it gets a fresh head <c>fc</c>
    /// (PyTorch's default initialisation from the current seed) on this model's device. Returned in evaluation mode.
    /// </summary>
    /// <param name="numClasses">Outputs of the new head; 0 for none.</param>
    /// <returns>The new model.</returns>
    /// <exception cref="InvalidOperationException">This model has LoRA layers or a head (share a plain base).</exception>
    internal ResNet ShareWeights(int numClasses)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(numClasses);
        if (fc is not null || named_parameters().Any(p => lora.IsLoraParameterName(p.name)))
        {
            throw new InvalidOperationException("ShareWeights needs a base model without LoRA layers and without a head.");
        }

        var shared = new ResNet(this, numClasses);
        shared.eval();
        return shared;
    }

    /// <summary>The pooled features [N, <see cref="FeatureSize"/>] of a normalised batch [N, 3, H, W].</summary>
    /// <param name="input">Normalised images, float32, on the model's device.</param>
    /// <returns>The features, before the head.</returns>
    public Tensor ForwardFeatures(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.dim() != 4)
        {
            throw new ArgumentException($"Expected images [N, C, H, W], got [{string.Join(", ", input.shape)}].", nameof(input));
        }

        using var scope = NewDisposeScope();
        bool fold = foldBatchNorm && !training && !is_grad_enabled();
        var x = nn.functional.relu(stemFold.Forward(conv1, bn1, input, fold), inplace: true);
        x = maxpool.Apply(x);
        foreach (var stage in stages)
        {
            x = stage.call(x);
        }

        return nn.functional.adaptive_avg_pool2d(x, [1, 1]).flatten(1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Logits [N, <see cref="NumClasses"/>] when the model has a head, otherwise the pooled features [N, <see cref="FeatureSize"/>].
    /// </summary>
    /// <param name="input">Normalised images [N, 3, H, W], float32.</param>
    /// <returns>Logits or features.</returns>
    public override Tensor forward(Tensor input)
    {
        if (fc is null)
        {
            return ForwardFeatures(input);
        }

        using var features = ForwardFeatures(input);
        return fc.call(features);
    }

    /// <summary>
    /// Sets training mode; BatchNorm layers stay in evaluation mode while <see cref="FreezeBatchNorm"/> is true. Drops the
    /// folded kernels of <see cref="FoldBatchNorm"/> (computed again on the next inference).
    /// </summary>
    /// <param name="train">True for training mode.</param>
    public override void train(bool train = true)
    {
        base.train(train);
        stemFold.Clear();
        if (train && FreezeBatchNorm)
        {
            foreach (var bn in modules().OfType<BatchNorm2d>())
            {
                bn.eval();
            }
        }
    }

    /// <summary>Loads parameters and buffers (as <c>nn.Module.load_state_dict</c>) and drops the folded kernels.</summary>
    /// <param name="source">Tensors by name.</param>
    /// <param name="strict">Whether every key must match.</param>
    /// <param name="skip">Keys not to load.</param>
    /// <returns>The missing and unexpected keys.</returns>
    public override (IList<string> missing_keys, IList<string> unexpected_keyes) load_state_dict(Dictionary<string, Tensor> source, bool strict = true, IList<string>? skip = null)
    {
        ClearFolds();
        return base.load_state_dict(source, strict, skip);
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            stemFold.Dispose();
        }

        base.Dispose(disposing);
    }

    private void ClearFolds()
    {
        stemFold.Clear();
        foreach (var block in Blocks)
        {
            block.ClearFolds();
        }
    }

    internal static Module<Tensor, Tensor> CreateConv(ConvSpec spec, Device? device)
    {
        var k = spec.Weight.shape;
        var padding = spec.SymmetricPadding;
        var conv = nn.Conv2d(spec.InChannels, spec.OutChannels, (k[2], k[3]), stride: (spec.Stride[0], spec.Stride[1]),
            padding: (padding[0], padding[1]), dilation: (spec.Dilation[0], spec.Dilation[1]), groups: spec.Groups,
            bias: spec.Bias is not null, device: device);
        using (no_grad())
        {
            conv.weight!.copy_(spec.Weight);
            if (spec.Bias is not null)
            {
                conv.bias!.copy_(spec.Bias);
            }
        }

        return conv;
    }

    internal static BatchNorm2d CreateBatchNorm(BatchNormSpec spec, Device? device)
    {
        var bn = nn.BatchNorm2d(spec.Scale.shape[0], eps: spec.Epsilon, device: device);
        using (no_grad())
        {
            bn.weight!.copy_(spec.Scale);
            bn.bias!.copy_(spec.Bias);
            bn.running_mean!.copy_(spec.Mean);
            bn.running_var!.copy_(spec.Variance);
        }

        bn.weight.requires_grad = false;
        bn.bias.requires_grad = false;
        return bn;
    }

    /// <summary>Max pooling with the symmetric padding of the graph's pads (ONNX opset 8 pools in floor mode).</summary>
    private sealed class MaxPoolSpecValues(MaxPoolSpec spec)
    {
        private readonly long[] kernel = spec.Kernel;
        private readonly long[] stride = spec.Stride;
        private readonly long[] padding = [Math.Max(spec.Pads[0], spec.Pads[2]), Math.Max(spec.Pads[1], spec.Pads[3])];

        public Tensor Apply(Tensor x) => nn.functional.max_pool2d(x, kernel, stride, padding);
    }
}
