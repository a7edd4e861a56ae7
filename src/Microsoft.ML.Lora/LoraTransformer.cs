using Microsoft.ML.Data;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Runtime;

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
/// <c>mlContext.Model.Load</c> rebuilds the model on the base with the recorded weights SHA-256, found by content
/// (see <see cref="LoraBaseModels"/>): the embedded MiniLM wherever the package is installed, a base already loaded in
/// this process, the path in the environment variable <c>MICROSOFT_ML_LORA_BASE_MODEL</c>, registered bases and search
/// directories, then the recorded location. Models on the same base share one copy of its weights in memory and run
/// LoRA unmerged on it (see <see cref="LoraBaseModels.PrivateMergedCopies"/>).
/// <para>
/// Lifetime: <see cref="Dispose"/> is idempotent: the owner's first call ends the transformer (then <see cref="Transform"/>
/// and new prediction engines throw <see cref="ObjectDisposedException"/>), later calls do nothing. Prediction engines made
/// earlier and cursors still open keep working: each holds its own reference on the model, and the native memory (and this
/// model's lease on its shared base) is freed when the last one is gone. ML.NET's <c>PredictionEngine</c> calls
/// <see cref="Dispose"/> on the transformer when the engine is disposed (unless created with <c>OwnsTransformer = false</c>);
/// such a call releases that engine's reference only, so disposing one engine of a pool never breaks the others nor the owner.
/// (ML.NET tells the transformer which caller it is by nothing but the call stack, which is what is looked at.) An engine
/// created with <c>OwnsTransformer = false</c> never reports that it is done, so its reference, and the model, stay until
/// the process ends.
/// </para>
/// </remarks>
public sealed class LoraTransformer : ITransformer, IDisposable, IBatchScorer<TextTokens>
{
    private readonly ModelLifetime lifetime;

    internal LoraTransformer(LoraTextModel model, ColumnNames columns, int inferenceBatchSize)
    {
        lifetime = new ModelLifetime(model, this);
        Model = model;
        Columns = columns;
        InferenceBatchSize = inferenceBatchSize;
    }

    internal LoraTextModel Model { get; }

    internal ColumnNames Columns { get; }

    internal int InferenceBatchSize { get; }

    /// <summary>
    /// Whether <c>Transform</c> sorts each window of rows by token count before cutting it into batches (outputs keep the
    /// row order; each row is tokenized once either way); from <see cref="LoraFineTuningOptions.GroupByLength"/>, true for a loaded model.
    /// </summary>
    internal bool GroupByLength { get; set; } = true;

    /// <summary>
    /// Sliding windows at inference (see <see cref="LoraFineTuningOptions.InferenceWindowStride"/>): 0 for none, else the
    /// word pieces between window starts, from 1 to MaxSequenceLength − 2. Starts as the options (or the model file) say;
    /// setting it changes how later cursors and prediction engines score (training is not affected by it) and what
    /// <c>Save</c> records.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The stride is negative or longer than the window's word pieces.</exception>
    /// <exception cref="InvalidOperationException">The model reads a text pair (windows take single texts).</exception>
    public int InferenceWindowStride
    {
        get => Model.WindowStride;
        set
        {
            int budget = Model.Settings.MaxSequenceLength - 2;
            if (value < 0 || value > budget)
            {
                throw new ArgumentOutOfRangeException(nameof(value), value,
                    string.Create(System.Globalization.CultureInfo.InvariantCulture, $"InferenceWindowStride must be 0 (no windows) or from 1 to MaxSequenceLength - 2 ({budget}) word pieces."));
            }

            if (value > 0 && Columns.Pair is not null)
            {
                throw new InvalidOperationException($"This model reads the text pair column '{Columns.Pair}'; sliding windows work on single texts only.");
            }

            Model.WindowStride = value;
        }
    }

    /// <summary>The truncation strategy the model was trained with and truncates long texts by (when no windows are used).</summary>
    public TruncationStrategy Truncation => Model.Settings.Truncation;

    /// <summary>Where a <c>Transform</c> cursor logs what truncation cut when it is disposed (the MLContext of Fit or Load).</summary>
    internal IHostEnvironment? Environment { get; init; }

    /// <summary>The task, from the label column's type at training time.</summary>
    public LoraTaskKind Task => Model.Label.Kind;

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

    /// <summary>
    /// The precision the frozen encoder runs in here: <see cref="LoraPrecision.Float32"/> or <see cref="LoraPrecision.BFloat16"/>
    /// (what <see cref="LoraPrecision.Auto"/> resolved to on this device and CPU).
    /// </summary>
    public LoraPrecision EncoderPrecision => Model.EncoderDtype == TorchSharp.torch.ScalarType.BFloat16 ? LoraPrecision.BFloat16 : LoraPrecision.Float32;

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
        var mapper = new RowScoringMapper<TextTokens>(this, inputSchema);
        lifetime.AddEngineReference();
        return mapper;
    }

    /// <summary>
    /// Writes the adapter as a Hugging Face PEFT directory: <c>adapter_config.json</c> (<c>task_type</c> SEQ_CLS) and
    /// <c>adapter_model.safetensors</c> with the classification head as <c>modules_to_save</c> in Hugging Face's form
    /// (binary: two logits; regression: in label units; exact conversions of ours), plus <c>head_config.json</c>: the
    /// <c>AutoModelForSequenceClassification.from_pretrained</c> arguments (num_labels, id2label, label2id,
    /// problem_type), the pooling and whether the export is exactly Hugging Face's model. Module paths are those of
    /// Hugging Face's <c>BertForSequenceClassification</c>. With <see cref="LoraFineTuningOptions.Pooling"/> =
    /// <see cref="PoolingMode.Cls"/> on a base with a pooler, PEFT on that base predicts what <see cref="Transform"/> does;
    /// with mean pooling it cannot (head_config.json says so). <see cref="LoraFineTuningOptions.InitialPeftAdapter"/>
    /// reads the directory back.
    /// </summary>
    /// <param name="directory">The directory to write (created if needed); files are written whole, then moved into place.</param>
    /// <returns>The directory written.</returns>
    public string SavePeftAdapter(string directory) =>
        PeftExport.Save(Model.Model, directory, "classifier", Model.Label, Model.Scaling, config => config["task_type"] = "SEQ_CLS",
            [(HuggingFaceHead.FileName, HuggingFaceHead.Describe(Model.Label, Model.Settings, Model.Model.Bert.HasPoolingLayer))]);

    /// <summary>Lazily adds the prediction columns; one forward pass per <see cref="LoraFineTuningOptions.InferenceBatchSize"/> rows.</summary>
    /// <exception cref="ObjectDisposedException">The transformer was disposed.</exception>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        lifetime.ThrowIfOwnerDisposed();
        return new BatchScoringView<TextTokens>(input, this, GroupByLength ? tokens => tokens.Count : null);
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
    /// rounding. Also usable with ML.NET's <c>ApplyOnnxModel</c> (see the README). The metadata records the
    /// <see cref="Truncation"/> strategy and the ONNX scoring package truncates long texts the same way (with
    /// <c>ApplyOnnxModel</c> the tokens are yours to cut). Sliding windows cannot be exported: the graph's output comes
    /// after the softmax, and windows average the logits before it.
    /// </remarks>
    /// <param name="path">The .onnx file to write (its folder is created if needed; an existing file is replaced).</param>
    /// <returns>The full path written.</returns>
    /// <exception cref="ObjectDisposedException">The transformer was disposed.</exception>
    /// <exception cref="InvalidOperationException"><see cref="InferenceWindowStride"/> is not 0 (windows cannot be exported).</exception>
    public string ExportOnnx(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (InferenceWindowStride > 0)
        {
            throw new InvalidOperationException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"ExportOnnx: this transformer scores long texts in sliding windows (InferenceWindowStride = {InferenceWindowStride}), which an exported graph cannot do (its output comes after the softmax; windows average the logits before it). Set InferenceWindowStride = 0 to export a model that truncates by its Truncation strategy ({Truncation})."));
        }

        string fullPath = Path.GetFullPath(path);
        AtomicFile.Write(fullPath, stream => Model.ExportOnnx(stream, Columns, InferenceBatchSize));
        return fullPath;
    }

    LabelInfo IBatchScorer<TextTokens>.Label => Model.Label;

    int IBatchScorer<TextTokens>.InferenceBatchSize => InferenceBatchSize;

    IReadOnlyList<string> IBatchScorer<TextTokens>.InputColumnNames => TextInputReader.InputColumnNames(Columns);

    Func<TextTokens> IBatchScorer<TextTokens>.CreateInputReader(DataViewRow row) => TextInputReader.Create(row, Columns, Model.Tokenizer);

    bool IBatchScorer<TextTokens>.SameInput(TextTokens a, TextTokens b) => a.SameIds(b);

    float[] IBatchScorer<TextTokens>.Predict(IReadOnlyList<TextTokens> inputs) => Model.Predict(inputs);

    void IBatchScorer<TextTokens>.AddReference() => AddReference();

    void IBatchScorer<TextTokens>.ReleaseReference() => ReleaseReference();

    /// <summary>True once the native memory is freed (no owner, engine or cursor holds the model any more).</summary>
    internal bool IsReleased => lifetime.IsReleased;

    /// <summary>Takes a reference for a cursor that computes predictions.</summary>
    /// <exception cref="ObjectDisposedException">The transformer was disposed.</exception>
    internal void AddReference() => lifetime.AddReference();

    /// <summary>Releases a reference taken by <see cref="AddReference"/>.</summary>
    internal void ReleaseReference()
    {
        LogTruncation();
        lifetime.ReleaseReference();
    }

    /// <summary>
    /// Logs, when a cursor is done, how many rows scored since the previous such line were longer than MaxSequenceLength
    /// and what share of their word pieces truncation cut (rows scored by prediction engines meanwhile are included).
    /// </summary>
    private void LogTruncation()
    {
        var counts = Model.ScoredTruncation.TakeAndReset();
        if (Environment is null || counts.Rows == 0)
        {
            return;
        }

        using var channel = Environment.Register(nameof(LoraTransformer)).Start("Transform");
        MlNetHost.Info(channel, counts.Describe("Transform", Model.Settings.MaxSequenceLength, Model.Settings.Truncation, Model.WindowStride));
    }

    void ICanSaveModel.Save(ModelSaveContext ctx)
    {
        // Saving is the owner's act: after the owner's Dispose it fails clearly (engines may still hold the tensors).
        lifetime.ThrowIfOwnerDisposed();
        LoraModelFile.Save(this, ctx);
    }

    /// <summary>
    /// Ends the transformer: the first call by its owner releases the owner's reference; later calls do nothing. A call
    /// made by a <c>PredictionEngine</c> being disposed releases that engine's reference instead. The native memory is
    /// freed when the owner, every engine and every open cursor have let go (see the remarks).
    /// </summary>
    public void Dispose() => lifetime.Dispose();
}
