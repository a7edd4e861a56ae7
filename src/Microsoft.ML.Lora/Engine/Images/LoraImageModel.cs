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
/// (<see cref="ResNet.FreezeBatchNorm"/>). The model owns its copy of the base weights (a 45 MB float32 ResNet-18), so
/// on the CPU it merges the LoRA updates into them in eval mode. Inference (<see cref="Predict"/>) is thread-safe once
/// the model is in eval mode.
/// </summary>
internal sealed class LoraImageModel : ILoraModel<ImageRow>
{
    private bool disposed;

    private LoraImageModel(ResNet model, ImageNormalization normalization, ImageBase baseModel, string sha256, Device device, LabelInfo label, ImageAdapterSettings settings, IReadOnlyList<string> adapted, bool merged)
    {
        Model = model;
        Normalization = normalization;
        Base = baseModel;
        BaseWeightsSha256 = sha256;
        Device = device;
        Label = label;
        Settings = settings;
        AdaptedModules = adapted;
        Merged = merged;
    }

    public ResNet Model { get; }

    public ImageNormalization Normalization { get; }

    /// <summary>Where the base was loaded from (recorded when the model is saved).</summary>
    public ImageBase Base { get; }

    public string BaseWeightsSha256 { get; }

    public Device Device { get; }

    public LabelInfo Label { get; }

    public ImageAdapterSettings Settings { get; }

    public IReadOnlyList<string> AdaptedModules { get; }

    /// <summary>Whether the LoRA updates are merged into the convolution weights in eval mode.</summary>
    public bool Merged { get; }

    nn.Module ILoraModel<ImageRow>.Module => Model;

    public ScalarType EncoderDtype => ScalarType.Float32;

    public LabelScaling Scaling => new(Settings.LabelMean, Settings.LabelScale);

    public long TrainableParameterCount => TrainableParameters().Sum(p => p.numel());

    public long TotalParameterCount => Model.parameters().Sum(p => p.numel());

    /// <summary>Loads the base from <paramref name="source"/> and builds the model on it (see the other overload).</summary>
    public static LoraImageModel Create(ImageBase source, Device device, LabelInfo label, ImageAdapterSettings settings, long seed, bool merge)
    {
        torch.random.manual_seed(seed);
        var (model, normalization, sha) = source.Load(label.OutputCount, device);
        return Create(model, normalization, source, sha, device, label, settings, seed, merge);
    }

    /// <summary>
    /// Builds the model on a loaded base (takes ownership of <paramref name="model"/> and <paramref name="normalization"/>,
    /// also on failure): a fresh head from <paramref name="seed"/>, LoRA on the convolutions whose path matches
    /// <see cref="ImageAdapterSettings.TargetModules"/> (random A, zero B), everything else frozen.
    /// </summary>
    /// <exception cref="ArgumentException">TargetModules matches no convolution (the message lists the convolutions).</exception>
    public static LoraImageModel Create(ResNet model, ImageNormalization normalization, ImageBase source, string sha256, Device device, LabelInfo label, ImageAdapterSettings settings, long seed, bool merge)
    {
        try
        {
            torch.random.manual_seed(seed);
            var config = new LoraConfig
            {
                r = settings.Rank,
                lora_alpha = settings.Alpha,
                lora_dropout = settings.Dropout,
                target_modules_regex = settings.TargetModules,
                use_rslora = settings.UseRsLora,
                modules_to_save = ["fc"],
                merge_weights = merge && device.type == DeviceType.CPU,
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

            lora.mark_only_lora_as_trainable(model);
            foreach (var (name, parameter) in model.named_parameters())
            {
                if (name.StartsWith("fc.", StringComparison.Ordinal))
                {
                    parameter.requires_grad = true;
                }
            }

            model.to(device);
            return new LoraImageModel(model, normalization, source, sha256, device, label, settings, adapted, config.merge_weights);
        }
        catch
        {
            model.Dispose();
            normalization.Dispose();
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
    public SortedDictionary<string, Tensor> AdapterState()
    {
        var result = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, parameter) in Model.named_parameters())
        {
            if (IsAdapterTensor(name))
            {
                result[name] = parameter.detach().to(CPU).clone();
            }
        }

        return result;
    }

    /// <summary>Copies stored adapter tensors into the model (all must be present, with matching shapes).</summary>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected or of another shape.</exception>
    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        var parameters = Model.named_parameters().Where(p => IsAdapterTensor(p.name)).ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        var missing = parameters.Keys.Where(k => !state.ContainsKey(k)).ToList();
        var extra = state.Keys.Where(k => !parameters.ContainsKey(k)).ToList();
        if (missing.Count > 0 || extra.Count > 0)
        {
            throw new InvalidDataException(
                $"The stored adapter does not fit the rebuilt image model. Missing: [{string.Join(", ", missing)}]; unexpected: [{string.Join(", ", extra)}].");
        }

        using var noGrad = no_grad();
        foreach (var (name, parameter) in parameters)
        {
            var value = state[name];
            if (!value.shape.SequenceEqual(parameter.shape))
            {
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"Stored tensor '{name}' has shape [{string.Join(", ", value.shape)}]; the model expects [{string.Join(", ", parameter.shape)}]."));
            }

            parameter.copy_(value);
        }
    }

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
        Normalization.Dispose();
    }

    private static ArgumentException NoTargetMatches(ResNet model, ImageAdapterSettings settings, Exception? inner)
    {
        var convolutions = model.named_modules().Where(m => m.module is TorchSharp.Modules.Conv2d).Select(m => m.name).ToList();
        return new ArgumentException(
            $"TargetModules '{settings.TargetModules}' matches no convolution of the base model (it must match a whole module path); " +
            $"its convolutions are: {string.Join(", ", convolutions)}.", nameof(LoraImageFineTuningOptions.TargetModules), inner);
    }
}
