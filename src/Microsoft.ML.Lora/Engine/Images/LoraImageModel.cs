using System.Globalization;
using Microsoft.ML.Lora.Engine.Tasks;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using static TorchSharp.torch;

// Errors about an option name the LoraImageFineTuningOptions field as the parameter, as the user set it there.
#pragma warning disable CA2208

namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>
/// The image model family: a pretrained ResNet (imported from ONNX) with LoRA on its convolutions, a linear head
/// (<c>fc</c>, on the globally pooled features), its input normalisation and its device. Rows of pixels become
/// normalised image tensors here, and nowhere else. BatchNorm layers always use their stored statistics and never train
/// (<see cref="ResNet.FreezeBatchNorm"/>). The network's weights and the normalisation are a shared base from
/// <see cref="BaseModelCache"/> (<see cref="LoadedImageBase"/>, aliased through <see cref="ResNet.ShareWeights"/>, never
/// changed), as for text; the model owns its LoRA factors and head and one lease on the base. Inference
/// (<see cref="Predict"/>) is thread-safe once the model is in eval mode.
/// </summary>
internal sealed class LoraImageModel : ILoraModel<ImageRow>
{
    private readonly BaseModelCache.Lease<LoadedImageBase> baseModel;
    private bool disposed;

    private LoraImageModel(BaseModelCache.Lease<LoadedImageBase> baseModel, ResNet model, ImageBase descriptor, Device device, LabelInfo label, ImageAdapterSettings settings, IReadOnlyList<string> adapted, bool mergedCopy)
    {
        this.baseModel = baseModel;
        Model = model;
        Base = descriptor;
        Device = device;
        Label = label;
        Settings = settings;
        AdaptedModules = adapted;
        MergedCopy = mergedCopy;
    }

    public ResNet Model { get; }

    /// <summary>The shared base's input normalisation.</summary>
    public ImageNormalization Normalization => baseModel.Base.Normalization;

    /// <summary>Where the base was loaded from (recorded when the model is saved).</summary>
    public ImageBase Base { get; }

    public string BaseWeightsSha256 => baseModel.Base.WeightsSha256;

    /// <summary>The shared base's network (tests: its tensors are those the model's network aliases).</summary>
    internal ResNet SharedBase => baseModel.Base.Model;

    public Device Device { get; }

    public LabelInfo Label { get; }

    public ImageAdapterSettings Settings { get; }

    public IReadOnlyList<string> AdaptedModules { get; }

    /// <summary>
    /// True when the adapted convolutions hold private copies of their base weights with the LoRA updates merged in (eval
    /// mode); false when LoRA runs unmerged on the shared base.
    /// </summary>
    public bool MergedCopy { get; }

    nn.Module ILoraModel<ImageRow>.Module => Model;

    public ScalarType EncoderDtype => ScalarType.Float32;

    public LabelScaling Scaling => new(Settings.LabelMean, Settings.LabelScale);

    public long TrainableParameterCount => TrainableParameters().Sum(p => p.numel());

    public long TotalParameterCount => Model.parameters().Sum(p => p.numel());

    /// <summary>Leases the base from <see cref="BaseModelCache"/> (loading it if needed), then builds the model on it (see the other overload).</summary>
    public static LoraImageModel Create(ImageBase source, Device device, LabelInfo label, ImageAdapterSettings settings, long seed, bool mergedCopy) =>
        Create(source.Acquire(device), source, device, label, settings, seed, mergedCopy);

    /// <summary>
    /// Builds the model on a shared base (takes ownership of <paramref name="lease"/>, also on failure): a network aliasing
    /// the base's tensors, a fresh head from <paramref name="seed"/>, LoRA on the convolutions whose path matches
    /// <see cref="ImageAdapterSettings.TargetModules"/> (random A, zero B), everything else frozen.
    /// </summary>
    /// <param name="lease">The base, on <paramref name="device"/>.</param>
    /// <param name="descriptor">The base's files, recorded when the model is saved.</param>
    /// <param name="device">Device for all weights.</param>
    /// <param name="label">Task and outputs.</param>
    /// <param name="settings">Adapter shape.</param>
    /// <param name="seed">Seed of the head and adapter initialisation.</param>
    /// <param name="mergedCopy">
    /// Give the adapted convolutions private copies of their base weights and merge the LoRA updates into them in eval mode
    /// (not on a CUDA device); otherwise LoRA runs unmerged on the shared base.
    /// </param>
    /// <exception cref="ArgumentException">TargetModules matches no convolution (the message lists the convolutions).</exception>
    public static LoraImageModel Create(BaseModelCache.Lease<LoadedImageBase> lease, ImageBase descriptor, Device device, LabelInfo label, ImageAdapterSettings settings, long seed, bool mergedCopy)
    {
        ResNet? model = null;
        try
        {
            torch.random.manual_seed(seed);
            model = lease.Base.Model.ShareWeights(label.OutputCount);
            torch.random.manual_seed(seed);
            var config = new LoraConfig
            {
                r = settings.Rank,
                lora_alpha = settings.Alpha,
                lora_dropout = settings.Dropout,
                target_modules_regex = settings.TargetModules,
                use_rslora = settings.UseRsLora,
                modules_to_save = ["fc"],
                merge_weights = mergedCopy && device.type != DeviceType.CUDA,
            };
            IReadOnlyList<string> adapted;
            try
            {
                adapted = lora.inject_adapter_in_model(config, model);
            }
            catch (ArgumentException e) when (e.ParamName == nameof(config))
            {
                throw NoTargetMatches(model, settings, e);
            }

            if (adapted.Count == 0 || adapted.Any(name => name == "fc"))
            {
                throw NoTargetMatches(model, settings, null);
            }

            // Merging writes into the weight: each adapted convolution then gets a private copy first (the rest stays shared).
            AdapterTensors.FreezeAllButAdapter(model, "fc.", privateWeights: config.merge_weights);
            model.to(device);
            return new LoraImageModel(lease, model, descriptor, device, label, settings, adapted, config.merge_weights);
        }
        catch
        {
            model?.Dispose();
            lease.Dispose();
            throw;
        }
    }

    public IEnumerable<TorchSharp.Modules.Parameter> TrainableParameters() => Model.parameters().Where(p => p.requires_grad);

    public Tensor Forward(IReadOnlyList<ImageRow> batch) => Forward(batch.Select(r => r.Rgb).ToArray());

    /// <summary>Runs images (planar RGB bytes [3, side, side] each) through normalisation, network and head.</summary>
    public Tensor Forward(IReadOnlyList<byte[]> images)
    {
        int side = Settings.ImageSize;
        long size = 3L * side * side;
        var buffer = new byte[images.Count * size];
        for (int i = 0; i < images.Count; i++)
        {
            if (images[i].Length != size)
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"Image {i} has {images[i].Length} bytes; expected {size} (3 × {side} × {side})."), nameof(images));
            }

            images[i].CopyTo(buffer, i * size);
        }

        using var scope = NewDisposeScope();
        var rgb = HostTransfer.ToDevice(tensor(buffer, [images.Count, 3, side, side]), Device).to_type(ScalarType.Float32);
        return Model.call(Normalization.Apply(rgb)).MoveToOuterDisposeScope();
    }

    /// <summary>Consecutive rows (images have no length to group by).</summary>
    public IEnumerable<ImageRow[]> TrainingBatches(IEnumerable<ImageRow> rows, int batchSize, bool groupByLength, Random random) => rows.Chunk(batchSize);

    /// <summary>The task's scores for images, row-major [images.Count × OutputCount]. The model must be in eval mode.</summary>
    public float[] Predict(IReadOnlyList<byte[]> images)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var output = Forward(images);
        return Label.Task.ToScores(output, Scaling).to(CPU).contiguous().data<float>().ToArray();
    }

    /// <summary>The tensors a model file stores: every LoRA tensor and the head, by parameter path, copied to the CPU.</summary>
    public SortedDictionary<string, Tensor> AdapterState() => AdapterTensors.Copy(Model, IsAdapterTensor);

    /// <summary>Copies stored adapter tensors into the model (all must be present, with matching shapes).</summary>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected or of another shape.</exception>
    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state) => AdapterTensors.Load(Model, IsAdapterTensor, state, "the rebuilt image model");

    /// <summary>LoRA tensors (<see cref="lora.IsLoraParameterName"/>) and the head <c>fc</c>: the only tensors a model file holds.</summary>
    public static bool IsAdapterTensor(string name) => lora.IsLoraParameterName(name) || name.StartsWith("fc.", StringComparison.Ordinal);

    public void Dispose()
    {
        if (disposed)
        {
            return;
        }

        disposed = true;
        Model.Dispose();
        baseModel.Dispose();
    }

    private static ArgumentException NoTargetMatches(ResNet model, ImageAdapterSettings settings, Exception? inner)
    {
        var convolutions = model.named_modules().Where(m => m.module is TorchSharp.Modules.Conv2d).Select(m => m.name).ToList();
        return new ArgumentException(
            $"TargetModules '{settings.TargetModules}' matches no convolution of the base model (it must match a whole module path); " +
            $"its convolutions are: {string.Join(", ", convolutions)}.", nameof(LoraImageFineTuningOptions.TargetModules), inner);
    }
}
