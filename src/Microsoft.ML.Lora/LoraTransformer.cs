using Microsoft.ML.Data;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora;

/// <summary>
/// A pretrained text encoder with trained LoRA adapters and a task head, produced by <see cref="LoraFineTuningEstimator"/>.
/// <see cref="Transform"/> is lazy and batched; <see cref="GetRowToRowMapper"/> makes it work in <c>PredictionEngine</c>
/// (several engines on several threads share one native copy of the weights). On the CPU in float32, inference runs with
/// the LoRA updates merged into the base weights; on a GPU, and with a bfloat16 encoder, the LoRA branches run beside the
/// base layers (see <see cref="LoraFineTuningOptions.Precision"/>).
/// </summary>
/// <remarks>
/// <c>mlContext.Model.Save</c> writes the options, the label's key values, the base-model reference (kind, location,
/// weights SHA-256), the requested <see cref="LoraPrecision"/> and only the LoRA and head tensors (float32);
/// <c>mlContext.Model.Load</c> rebuilds the model from the base
/// model on this machine and checks its fingerprint. The embedded MiniLM is found wherever the package is installed; a
/// Hugging Face folder or ONNX file is looked up at the recorded absolute path, or at the path in the environment variable
/// <c>MICROSOFT_ML_LORA_BASE_MODEL</c> when the base model has moved (a folder, or an .onnx file with vocab.txt beside it).
/// <para>
/// Lifetime: <see cref="Dispose"/> releases native memory promptly. ML.NET's <c>PredictionEngine</c> disposes the
/// transformer it was created from when it is disposed (unless created with <c>OwnsTransformer = false</c>), which would
/// break other engines sharing the model (as in a pool). So each row mapper handed out (one per engine) takes a reference,
/// each <see cref="Dispose"/> call releases one, and the weights are freed when the last reference is released.
/// </para>
/// </remarks>
public sealed class LoraTransformer : ITransformer, IDisposable, ITextScorer
{
    private readonly Lock gate = new();
    private int references = 1;

    internal LoraTransformer(LoraTextModel model, ColumnNames columns, int inferenceBatchSize)
    {
        Model = model;
        Columns = columns;
        InferenceBatchSize = inferenceBatchSize;
    }

    internal LoraTextModel Model { get; }

    internal ColumnNames Columns { get; }

    internal int InferenceBatchSize { get; }

    /// <summary>The task, from the label column's type at training time.</summary>
    public LoraTaskKind Task => Model.Label.Task;

    /// <summary>Number of trained parameters (LoRA matrices and head).</summary>
    public long TrainableParameterCount => Model.TrainableParameterCount;

    /// <summary>Number of parameters of the whole model (frozen base included).</summary>
    public long TotalParameterCount => Model.TotalParameterCount;

    /// <summary>Module paths that carry a LoRA adapter (e.g. <c>bert.encoder.layer.0.attention.self.query</c>).</summary>
    public IReadOnlyList<string> AdaptedModules => Model.AdaptedModules;

    /// <summary>The pretrained base this adapter belongs to.</summary>
    public PretrainedModel BaseModel => Model.BaseDescriptor;

    /// <summary>SHA-256 fingerprint of the base weights (checked when a saved model is loaded).</summary>
    public string BaseModelSha256 => Model.BaseWeightsSha256;

    /// <summary>True: the transformer maps rows one to one (so <c>PredictionEngine</c> works).</summary>
    public bool IsRowToRowMapper => true;

    /// <summary>The input columns followed by Score (and PredictedLabel, and Probability for binary classification).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The text column is missing or not text (the message names it).</exception>
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        OutputSchema.CheckTextColumns(inputSchema, Columns, nameof(inputSchema));
        return OutputSchema.Build(inputSchema, Columns, Model.Label);
    }

    /// <summary>A row mapper for <c>PredictionEngine</c>: one forward pass per row.</summary>
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        var mapper = new LoraRowMapper(this, inputSchema);
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(references == 0, this);
            references++;
        }

        return mapper;
    }

    /// <summary>
    /// Writes the adapter as a Hugging Face PEFT directory (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>, the
    /// classification head as <c>modules_to_save</c>). Module paths are those of Hugging Face's <c>BertForSequenceClassification</c>,
    /// so PEFT loads it onto the same base model; <see cref="LoraFineTuningOptions.InitialPeftAdapter"/> reads it back.
    /// </summary>
    /// <param name="directory">The directory to write (created if needed).</param>
    /// <returns>The directory written.</returns>
    public string SavePeftAdapter(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        return PeftAdapter.Save(Model.Model, directory);
    }

    /// <summary>Lazily adds the prediction columns; one forward pass per <see cref="LoraFineTuningOptions.InferenceBatchSize"/> rows.</summary>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        return new LoraDataView(input, this);
    }

    /// <summary>
    /// Writes the model as one self-contained ONNX file that scores without TorchSharp: the encoder with the LoRA updates
    /// merged into its weights, the pooling, the head and the output activation (softmax probabilities for multiclass,
    /// the logit for binary classification, the value in label units for regression: what <see cref="Transform"/> puts in
    /// the Score column). Inputs <c>input_ids</c>, <c>attention_mask</c> and <c>token_type_ids</c> (int64 [batch, sequence],
    /// both axes dynamic), output <c>score</c> (float32 [batch, outputs]); operator set 17. The model's metadata records
    /// the task, the label's key values, the column names, the maximum sequence length and the tokenizer (its settings and
    /// the whole vocabulary), so <c>mlContext.Transforms.ScoreLoraOnnx(path)</c> of the Microsoft.ML.Lora.Onnx package
    /// needs nothing else. The file is written to a temporary file beside <paramref name="path"/> and then moved into place.
    /// </summary>
    /// <remarks>
    /// The weights are written in float32 as the model computes them in eval mode (each linear layer and embedding table
    /// is read by running it, so LoRA is included whether merged or not). On the CPU in float32 the ONNX Runtime scores
    /// equal <see cref="Transform"/>'s within 1e-4; a model whose encoder runs in bfloat16 (on a GPU) differs by bfloat16
    /// rounding. Also usable with ML.NET's <c>ApplyOnnxModel</c> (see the README).
    /// </remarks>
    /// <param name="path">The .onnx file to write (its folder is created if needed; an existing file is replaced).</param>
    /// <returns>The full path written.</returns>
    /// <exception cref="ObjectDisposedException">The transformer was disposed.</exception>
    public string ExportOnnx(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        string fullPath = Path.GetFullPath(path);
        Models.AtomicFile.Write(fullPath, stream => Model.ExportOnnx(stream, Columns, InferenceBatchSize));
        return fullPath;
    }

    ColumnNames ITextScorer.Columns => Columns;

    LabelInfo ITextScorer.Label => Model.Label;

    int ITextScorer.InferenceBatchSize => InferenceBatchSize;

    float[] ITextScorer.Predict(IReadOnlyList<string> texts, IReadOnlyList<string>? pairs) => Model.Predict(texts, pairs);

    void ICanSaveModel.Save(ModelSaveContext ctx) => LoraModelFile.Save(this, ctx);

    /// <summary>
    /// Releases one reference (see the remarks); the last one frees the native memory of the model, after which predictions
    /// throw <see cref="ObjectDisposedException"/>.
    /// </summary>
    public void Dispose()
    {
        lock (gate)
        {
            if (references == 0 || --references > 0)
            {
                return;
            }
        }

        Model.Dispose();
    }
}
