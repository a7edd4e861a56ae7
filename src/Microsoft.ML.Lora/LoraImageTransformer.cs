using Microsoft.ML.Data;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Engine.Images;
using Microsoft.ML.Lora.Internal;

namespace Microsoft.ML.Lora;

/// <summary>
/// A pretrained image model with trained LoRA adapters on its convolutions and a linear head, produced by
/// <see cref="LoraImageFineTuningEstimator"/>. <see cref="Transform"/> is lazy and batched; <see cref="GetRowToRowMapper"/>
/// makes it work in <c>PredictionEngine</c>. The network's weights are shared with every other image model on the same
/// base in this process, and LoRA runs beside the frozen convolutions (unmerged) unless
/// <see cref="LoraBaseModels.PrivateMergedCopies"/> gives the adapted convolutions merged private copies.
/// </summary>
/// <remarks>
/// <c>mlContext.Model.Save</c> writes the options, the label's key values, the base reference (the ONNX paths and the
/// base's SHA-256) and only the LoRA and head tensors (float32); <c>mlContext.Model.Load</c> rebuilds the model on the base
/// with the recorded SHA-256, found at the recorded paths, the path in the environment variable
/// <c>MICROSOFT_ML_LORA_BASE_MODEL</c>, ML.NET's ResNet-18 in the application's folder, or the
/// <see cref="LoraBaseModels.SearchDirectories"/>. Lifetime as <see cref="LoraTransformer"/>: the owner's first
/// <see cref="Dispose"/> ends it; prediction engines and open cursors keep the model until they let go.
/// </remarks>
public sealed class LoraImageTransformer : ITransformer, IDisposable, IBatchScorer<byte[]>
{
    private readonly ModelLifetime lifetime;

    internal LoraImageTransformer(LoraImageModel model, ColumnNames columns, int inferenceBatchSize)
    {
        lifetime = new ModelLifetime(model, this);
        Model = model;
        Columns = columns;
        InferenceBatchSize = inferenceBatchSize;
    }

    internal LoraImageModel Model { get; }

    /// <summary>The columns; <see cref="ColumnNames.Text"/> is the image column.</summary>
    internal ColumnNames Columns { get; }

    internal int InferenceBatchSize { get; }

    /// <summary>The task, from the label column's type at training time.</summary>
    public LoraTaskKind Task => Model.Label.Kind;

    /// <summary>The side of the square images the network sees (images are resized to it).</summary>
    public int ImageSize => Model.Settings.ImageSize;

    /// <summary>Number of trained parameters (LoRA matrices and head).</summary>
    public long TrainableParameterCount => Model.TrainableParameterCount;

    /// <summary>Number of parameters of the whole model (frozen base included).</summary>
    public long TotalParameterCount => Model.TotalParameterCount;

    /// <summary>Module paths that carry a LoRA adapter (e.g. <c>layer1.0.conv1</c>).</summary>
    public IReadOnlyList<string> AdaptedModules => Model.AdaptedModules;

    /// <summary>The base's ONNX file.</summary>
    public string BaseModelPath => Model.Base.ModelPath;

    /// <summary>SHA-256 fingerprint of the base (network weights, BatchNorm statistics and normalisation; checked when a saved model is loaded).</summary>
    public string BaseModelSha256 => Model.BaseWeightsSha256;

    /// <summary>True: the transformer maps rows one to one (so <c>PredictionEngine</c> works).</summary>
    public bool IsRowToRowMapper => true;

    /// <summary>The input columns followed by Score (and PredictedLabel, and Probability for binary classification).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The image column is missing or of another type (the message names it).</exception>
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        ImageColumnReader.For(inputSchema, Columns.Text, ImageSize, nameof(inputSchema));
        return OutputSchema.Build(inputSchema, Columns, Model.Label);
    }

    /// <summary>A row mapper for <c>PredictionEngine</c>: one forward pass per row.</summary>
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        var mapper = new RowScoringMapper<byte[]>(this, inputSchema);
        lifetime.AddEngineReference();
        return mapper;
    }

    /// <summary>Lazily adds the prediction columns; one forward pass per <see cref="LoraImageFineTuningOptions.InferenceBatchSize"/> rows.</summary>
    /// <exception cref="ObjectDisposedException">The transformer was disposed.</exception>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        lifetime.ThrowIfOwnerDisposed();
        return new BatchScoringView<byte[]>(input, this);
    }

    /// <summary>
    /// Writes the adapter as a Hugging Face PEFT directory: <c>adapter_config.json</c> (PEFT's <c>LoraConfig</c>: r,
    /// lora_alpha, the target convolutions as the regular expression <c>target_modules</c>, <c>modules_to_save</c>
    /// <c>["fc"]</c>) and <c>adapter_model.safetensors</c> (<c>base_model.model.layer1.0.conv1.lora_A.weight</c> [r, in, k, k],
    /// <c>.lora_B.weight</c> [out, r, 1, 1], and the head <c>base_model.model.fc.weight</c>/<c>.bias</c>). Module paths are
    /// torchvision's ResNet names (docs/IMAGES.md), so <c>PeftAdapter.Load</c> into a fresh import of the same base, with a
    /// head of the same size, predicts what <see cref="Transform"/> does (logits; Score is their softmax for multiclass).
    /// The head is in the Python model's semantics: binary as two logits [0, z], regression in label units. BatchNorm
    /// statistics are not written: they stay the base's (frozen).
    /// </summary>
    /// <param name="directory">The directory to write (created if needed); files are written whole, then moved into place.</param>
    /// <returns>The directory written.</returns>
    /// <exception cref="ObjectDisposedException">The transformer was disposed.</exception>
    public string SavePeftAdapter(string directory)
    {
        lifetime.ThrowIfOwnerDisposed();
        return PeftExport.Save(Model.Model, directory, "fc", Model.Label, Model.Scaling, _ => { }, []);
    }

    /// <summary>Ends the transformer (see the remarks).</summary>
    public void Dispose() => lifetime.Dispose();

    /// <summary>True once the native memory is freed.</summary>
    internal bool IsReleased => lifetime.IsReleased;

    void ICanSaveModel.Save(ModelSaveContext ctx)
    {
        lifetime.ThrowIfOwnerDisposed();
        LoraImageModelFile.Save(this, ctx);
    }

    LabelInfo IBatchScorer<byte[]>.Label => Model.Label;

    int IBatchScorer<byte[]>.InferenceBatchSize => InferenceBatchSize;

    IReadOnlyList<string> IBatchScorer<byte[]>.InputColumnNames => [Columns.Text];

    Func<byte[]> IBatchScorer<byte[]>.CreateInputReader(DataViewRow row) =>
        ImageColumnReader.For(row.Schema, Columns.Text, ImageSize, nameof(row)).CreateReader(row);

    bool IBatchScorer<byte[]>.SameInput(byte[] a, byte[] b) => a.AsSpan().SequenceEqual(b);

    float[] IBatchScorer<byte[]>.Predict(IReadOnlyList<byte[]> inputs) => Model.Predict(inputs);

    void IBatchScorer<byte[]>.AddReference() => lifetime.AddReference();

    void IBatchScorer<byte[]>.ReleaseReference() => lifetime.ReleaseReference();
}
