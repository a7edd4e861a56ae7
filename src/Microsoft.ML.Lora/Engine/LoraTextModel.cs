using System.Globalization;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine.Tasks;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Onnx;
using TorchSharp;
using static TorchSharp.torch;

// Errors about an option name the LoraFineTuningOptions field as the parameter, as the user set it there.
#pragma warning disable CA2208

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The text model family: a pretrained BERT encoder with LoRA adapters injected and a task head, its tokenizer and its
/// device; rows of text (and pairs) become token tensors here, and nowhere else. The encoder's
/// weights are a shared base from <see cref="BaseModelCache"/> (aliased, never changed); the model owns its LoRA
/// factors and head and one lease on the base. Inference (<see cref="Predict"/>) is thread-safe once the model is in eval mode.
/// </summary>
internal sealed class LoraTextModel : ILoraModel<TokenizedRow>
{
    private readonly BaseModelCache.Lease<LoadedPretrainedModel> baseModel;
    private bool disposed;

    private LoraTextModel(BaseModelCache.Lease<LoadedPretrainedModel> baseModel, PretrainedModel descriptor, BertForSequenceClassification model, Device device, LoraPrecision precision, ScalarType encoderDtype, LabelInfo label, AdapterSettings settings, IReadOnlyList<string> adaptedModules, bool mergedCopy)
    {
        this.baseModel = baseModel;
        BaseDescriptor = descriptor;
        MergedCopy = mergedCopy;
        Model = model;
        Device = device;
        Precision = precision;
        EncoderDtype = encoderDtype;
        Label = label;
        Settings = settings;
        WindowStride = settings.WindowStride;
        AdaptedModules = adaptedModules;
    }

    public BertForSequenceClassification Model { get; }

    nn.Module ILoraModel<TokenizedRow>.Module => Model;

    /// <summary>The regression label standardisation (identity for classification).</summary>
    public LabelScaling Scaling => new(Settings.LabelMean, Settings.LabelScale);

    public BertTextTokenizer Tokenizer => baseModel.Base.Tokenizer;

    public Device Device { get; }

    /// <summary>The precision asked for (recorded in the model file).</summary>
    public LoraPrecision Precision { get; }

    /// <summary>The dtype the frozen encoder runs in on <see cref="Device"/> (float32 or bfloat16); everything trainable is float32.</summary>
    public ScalarType EncoderDtype { get; }

    public LabelInfo Label { get; }

    public AdapterSettings Settings { get; }

    public IReadOnlyList<string> AdaptedModules { get; }

    /// <summary>The base model descriptor (recorded when the model is saved).</summary>
    public PretrainedModel BaseDescriptor { get; }

    public string BaseWeightsSha256 => baseModel.Base.WeightsSha256;

    /// <summary>The shared base's encoder (tests: its tensors are those the model's encoder aliases).</summary>
    internal BertModel SharedBase => baseModel.Base.Model;

    /// <summary>
    /// True when the adapted layers hold private copies of their base weights with the LoRA updates merged in (eval
    /// mode); false when LoRA runs unmerged on the shared base.
    /// </summary>
    public bool MergedCopy { get; }

    /// <summary>Leases the base from <see cref="BaseModelCache"/> (loading it if needed), then builds the model on it (see the other overload).</summary>
    public static LoraTextModel Create(PretrainedModel source, Device device, LoraPrecision precision, LabelInfo label, AdapterSettings settings, long seed, bool mergedCopy)
    {
        var lease = BaseModelCache.AcquireOrLoad(source, device, DeviceResolver.ResolveEncoderDtype(precision, device));
        return Create(lease, source, device, precision, label, settings, seed, mergedCopy);
    }

    /// <summary>
    /// Builds a model on a shared base: an encoder tree aliasing the base's tensors, the head and the LoRA adapters
    /// (random A, zero B); freezes all but LoRA and head. Takes ownership of <paramref name="lease"/> (also on failure).
    /// </summary>
    /// <param name="lease">The base, already on <paramref name="device"/> in the encoder dtype of <paramref name="precision"/>.</param>
    /// <param name="descriptor">The base's descriptor, recorded when the model is saved.</param>
    /// <param name="device">Device for all weights.</param>
    /// <param name="precision">Precision asked for; resolved for <paramref name="device"/> (see <see cref="DeviceResolver.ResolveEncoderDtype(LoraPrecision, Device)"/>).</param>
    /// <param name="label">Task and outputs.</param>
    /// <param name="settings">Adapter shape.</param>
    /// <param name="seed">Seed of the head and adapter initialisation.</param>
    /// <param name="mergedCopy">
    /// Give the adapted layers private copies of their base weights and merge the LoRA updates into them in eval mode.
    /// Honoured only in float32 on the CPU (see below); otherwise LoRA runs unmerged on the shared base.
    /// </param>
    public static LoraTextModel Create(BaseModelCache.Lease<LoadedPretrainedModel> lease, PretrainedModel descriptor, Device device, LoraPrecision precision, LabelInfo label, AdapterSettings settings, long seed, bool mergedCopy)
    {
        var encoderDtype = DeviceResolver.ResolveEncoderDtype(precision, device);
        BertModel? encoder = null;
        try
        {
            // A tree of its own over the shared tensors: injection below replaces modules in this tree only. On a
            // half-precision base, LoRA factors are float32 (LoraArguments.FactorDtype), and so is the head.
            encoder = lease.Base.Model.ShareWeights();
            torch.random.manual_seed(seed);
            var model = new BertForSequenceClassification(encoder, label.OutputCount, settings.Pooling);
            var config = new LoraConfig
            {
                r = settings.Rank,
                lora_alpha = settings.Alpha,
                lora_dropout = settings.Dropout,
                target_modules = settings.TargetModules.ToList(),
                use_rslora = settings.UseRsLora,

                // The head trains with the adapter and is saved with it, as PEFT's modules_to_save.
                modules_to_save = ["classifier"],

                // With mean pooling the pooler (present in some exports) is unused: an adapter there would never train.
                exclude_modules = settings.Pooling == PoolingMode.Mean ? ["pooler.dense"] : null,

                // The shared base is never changed: LoRA runs unmerged unless a private merged copy is asked for, and
                // then only for float32 on the CPU. Merging ΔW into bfloat16 weights rounds it to the weight's 8
                // significant bits (ΔW is small next to W, so most of it is lost) and unmerging does not restore the base.
                // On a GPU a merged layer compares its factors with the merged ones at every forward (torch.equal: a
                // device read per layer per batch), which costs more than the branch's two small matrix products.
                merge_weights = mergedCopy && encoderDtype == ScalarType.Float32 && device.type != DeviceType.CUDA,
            };
            IReadOnlyList<string> adapted;
            try
            {
                adapted = lora.inject_adapter_in_model(config, model);
            }
            catch (ArgumentException e) when (e.ParamName == nameof(config) && e.Message.StartsWith("No module of the model matches", StringComparison.Ordinal))
            {
                throw NoTargetMatches(model, settings, e);
            }

            if (adapted.Count == 0)
            {
                throw NoTargetMatches(model, settings, null);
            }

            // Merging writes into the weight: each adapted layer then gets a private copy first (the rest stays shared).
            AdapterTensors.FreezeAllButAdapter(model, "classifier.", privateWeights: config.merge_weights);

            model.to(device);
            return new LoraTextModel(lease, descriptor, model, device, precision, encoderDtype, label, settings, adapted, config.merge_weights);
        }
        catch
        {
            encoder?.Dispose();
            lease.Dispose();
            throw;
        }
    }

    /// <summary>Trainable parameters (LoRA A/B and the head).</summary>
    public IEnumerable<TorchSharp.Modules.Parameter> TrainableParameters() => Model.parameters().Where(p => p.requires_grad);

    public long TrainableParameterCount => TrainableParameters().Sum(p => p.numel());

    public long TotalParameterCount => Model.parameters().Sum(p => p.numel());

    /// <summary>The inference window stride in word pieces (0: no windows); starts as the settings', changed by <see cref="LoraTransformer.InferenceWindowStride"/>.</summary>
    public int WindowStride { get; set; }

    /// <summary>What truncation cut in the texts this model scored since the last <see cref="TruncationCounts.TakeAndReset"/>.</summary>
    public TruncationCounts ScoredTruncation { get; } = new();

    /// <summary>Tokenizes a training row with the model's maximum length and truncation (tokenized once, see <see cref="TokenCache"/>).</summary>
    /// <param name="row">The row.</param>
    /// <param name="hasPair">Whether the model reads a text pair column (a row's missing pair then reads as empty).</param>
    public EncodedRow Encode(TrainingRow row, bool hasPair) =>
        Tokenizer.EncodeRow(row.Text, hasPair ? row.Pair ?? string.Empty : null, Settings.MaxSequenceLength, Settings.Truncation);

    /// <summary>Pads a batch of tokenized training rows and runs the model.</summary>
    public Tensor Forward(IReadOnlyList<TokenizedRow> batch) => Forward(Tokenizer.Pad(batch.Select(r => r.Tokens).ToArray()));

    /// <summary>
    /// Training batches: with length grouping, each window of <see cref="LengthGrouping.TrainingWindowBatches"/> batches is
    /// sorted by token count, cut and shuffled (<see cref="LengthGrouping"/>); otherwise consecutive rows.
    /// </summary>
    public IEnumerable<TokenizedRow[]> TrainingBatches(IEnumerable<TokenizedRow> rows, int batchSize, bool groupByLength, Random random) =>
        groupByLength
            ? LengthGrouping.Batches(rows, batchSize, LengthGrouping.TrainingWindowBatches * batchSize, r => r.Tokens.Ids.Length, random)
            : rows.Chunk(batchSize);

    /// <summary>Encodes texts (and pairs) with the model's truncation and runs the model: [n, OutputCount] logits or standardised values.</summary>
    public Tensor Forward(IReadOnlyList<string> texts, IReadOnlyList<string>? pairs) =>
        Forward(Tokenizer.Encode(texts, pairs, Settings.MaxSequenceLength, Settings.Truncation));

    /// <summary>Runs the model on a tokenized batch: [BatchSize, OutputCount] logits or standardised values.</summary>
    public Tensor Forward(EncodedBatch batch)
    {
        var (ids, mask, types) = batch.ToTensors(Device);
        return Model.call(ids, mask, types);
    }

    /// <summary>
    /// Predicts tokenized rows (<see cref="BertTextTokenizer.TokenizeRow"/>; nothing is tokenized again here): multiclass
    /// class probabilities, binary logits, or regression values in label units; row-major [rows.Count × OutputCount]. The
    /// model must be in eval mode. Rows are truncated by <see cref="AdapterSettings.Truncation"/>; with a window stride
    /// (single texts only), a text longer than the budget is scored as sliding windows
    /// (<see cref="BertTextTokenizer.WindowRows(IReadOnlyList{TextTokens}, int, int)"/>) and its output is the mean of its
    /// windows' logits (standardised values for regression), before the softmax or the label scale.
    /// </summary>
    public float[] Predict(IReadOnlyList<TextTokens> rows)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Tensor output;
        int stride = WindowStride;
        if (stride > 0 && rows.All(r => r.Pair is null))
        {
            output = PredictWindows(rows, stride);
        }
        else
        {
            var batch = Tokenizer.Pad(rows.Select(r => Tokenizer.EncodeRow(r, Settings.MaxSequenceLength, Settings.Truncation)).ToArray());
            output = Forward(batch);
            ScoredTruncation.Add(rows.Count, batch.TruncatedRows, batch.SourceTokens, batch.KeptTokens);
        }

        output = Label.Task.ToScores(output, Scaling);
        return output.to(torch.CPU).contiguous().data<float>().ToArray();
    }

    /// <summary>
    /// Sliding windows: forward passes of at most max(rows, 32) windows each, then per row the mean of its windows'
    /// outputs.
    /// </summary>
    private Tensor PredictWindows(IReadOnlyList<TextTokens> rows, int stride)
    {
        var (windows, source) = Tokenizer.WindowRows(rows, Settings.MaxSequenceLength, stride);
        int chunk = Math.Max(rows.Count, 32);
        var outputs = windows.Chunk(chunk).Select(part => Forward(Tokenizer.Pad(part))).ToList();
        var all = outputs.Count == 1 ? outputs[0] : torch.cat(outputs, 0);
        var index = HostTransfer.ToDevice(torch.tensor(source.Select(r => (long)r).ToArray(), ScalarType.Int64), Device);
        var sums = torch.zeros([rows.Count, all.shape[1]], all.dtype, Device).index_add_(0, index, all, 1);
        var counts = torch.zeros([rows.Count], all.dtype, Device).index_add_(0, index, torch.ones([source.Length], all.dtype, Device), 1);
        long longRows = source.Length - rows.Count == 0 ? 0 : source.CountBy(r => r).Count(g => g.Value > 1);
        ScoredTruncation.Add(rows.Count, longRows, 0, 0);
        return sums / counts.unsqueeze(1);
    }

    /// <summary>
    /// Writes the model as one ONNX graph (<see cref="OnnxBertExporter"/>) with the output <see cref="Predict"/> returns
    /// (softmax for multiclass, the logit for binary, label units for regression) and the metadata that lets the ONNX
    /// scoring package tokenize and name the columns on its own (<see cref="OnnxModelMetadata"/>).
    /// </summary>
    public void ExportOnnx(Stream destination, ColumnNames columns, int inferenceBatchSize)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        var (transform, scale, shift) = Label.Task.OnnxOutput(Scaling);
        var metadata = new OnnxModelMetadata(Label, columns, inferenceBatchSize, Settings.MaxSequenceLength, Tokenizer.LowerCase, Tokenizer.StripAccents, Tokenizer.VocabularyText, Settings.Truncation);
        OnnxBertExporter.Export(Model, destination, transform, scale, shift, metadata.ToProperties());
    }

    /// <summary>The tensors a model file stores: every LoRA tensor and the head, by parameter path, copied to the CPU.</summary>
    public SortedDictionary<string, Tensor> AdapterState() => AdapterTensors.Copy(Model, IsAdapterTensor);

    /// <summary>Copies stored adapter tensors into the model (all must be present, with matching shapes).</summary>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected or of another shape.</exception>
    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state) => AdapterTensors.Load(Model, IsAdapterTensor, state, "the rebuilt model");

    /// <summary>LoRA tensors (<see cref="lora.IsLoraParameterName"/>) and the classification head: the only tensors a model file holds.</summary>
    public static bool IsAdapterTensor(string name) =>
        lora.IsLoraParameterName(name) || name.StartsWith("classifier.", StringComparison.Ordinal);

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

    /// <summary>Disposes <paramref name="model"/> and returns the error that names the TargetModules and the linear layers that exist.</summary>
    private static ArgumentException NoTargetMatches(nn.Module model, AdapterSettings settings, Exception? inner)
    {
        // The distinct last parts of the encoder's linear layers' paths (the head is not a target).
        var existing = model.named_modules()
            .Where(m => m.module is TorchSharp.Modules.Linear && !m.name.StartsWith("classifier", StringComparison.Ordinal))
            .Select(m => m.name[(m.name.LastIndexOf('.') + 1)..])
            .Distinct(StringComparer.Ordinal)
            .ToList();
        model.Dispose();
        return new ArgumentException(
            $"None of the TargetModules ({string.Join(", ", settings.TargetModules)}) matches a linear layer of the base model; " +
            $"its linear layers are named: {string.Join(", ", existing)}.", nameof(LoraFineTuningOptions.TargetModules), inner);
    }
}
