using Microsoft.ML.Data;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Onnx.Internal;
using Microsoft.ML.OnnxRuntime;

namespace Microsoft.ML.Lora.Onnx;

/// <summary>
/// Scores text with a model written by <c>LoraTransformer.ExportOnnx</c>, on ONNX Runtime: it tokenizes (the BERT
/// WordPiece tokenizer of Microsoft.ML.Lora, with the vocabulary and settings stored in the model), batches and runs the
/// exported graph, and adds the same columns as the <c>LoraTransformer</c> it was exported from (Score; PredictedLabel;
/// Probability for binary classification), with the same names and types. Needs neither TorchSharp nor libtorch.
/// </summary>
/// <remarks>
/// <see cref="Transform"/> is lazy and batched (<see cref="InferenceBatchSize"/> rows per run);
/// <see cref="GetRowToRowMapper"/> makes it work in <c>PredictionEngine</c> (engines on several threads share one ONNX
/// Runtime session). <c>mlContext.Model.Save</c> stores the whole ONNX model in the zip, so <c>mlContext.Model.Load</c>
/// needs nothing else. <see cref="Dispose"/> releases one reference: each row mapper handed out (one per
/// <c>PredictionEngine</c>, which disposes its transformer) and each open cursor that computes predictions takes one, and
/// the session is released with the last.
/// </remarks>
public sealed class LoraOnnxTransformer : ITransformer, IDisposable, IBatchScorer<TextTokens>
{
    private readonly Lock gate = new();
    private readonly InferenceSession session;
    private readonly BertTextTokenizer tokenizer;
    private readonly OnnxModelMetadata metadata;
    private int references = 1;

    private LoraOnnxTransformer(byte[] model, string source, int? inferenceBatchSize)
    {
        if (inferenceBatchSize is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(inferenceBatchSize), inferenceBatchSize, "inferenceBatchSize must be at least 1.");
        }

        ModelBytes = model;
        try
        {
            session = new InferenceSession(model);
        }
        catch (OnnxRuntimeException e)
        {
            throw new InvalidDataException($"{source} is not an ONNX model ONNX Runtime can load: {e.Message}", e);
        }

        try
        {
            metadata = OnnxModelMetadata.FromProperties(session.ModelMetadata.CustomMetadataMap, source);
            using var vocabulary = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(metadata.Vocabulary));
            tokenizer = BertTextTokenizer.FromVocab(vocabulary, metadata.LowerCase, metadata.StripAccents);
        }
        catch
        {
            session.Dispose();
            throw;
        }

        InferenceBatchSize = inferenceBatchSize ?? metadata.InferenceBatchSize;
    }

    /// <summary>The bytes of the ONNX model (kept for <c>mlContext.Model.Save</c>).</summary>
    internal byte[] ModelBytes { get; }

    /// <summary>Rows per ONNX Runtime run in <see cref="Transform"/> (from the exported model unless set when loading).</summary>
    public int InferenceBatchSize { get; }

    /// <summary>Most tokens per row, special tokens included; longer texts are truncated as in training.</summary>
    public int MaxSequenceLength => metadata.MaxSequenceLength;

    /// <summary>The text column read.</summary>
    public string TextColumnName => metadata.Columns.Text;

    /// <summary>The second text column read for sentence pairs, or null.</summary>
    public string? TextPairColumnName => metadata.Columns.Pair;

    /// <summary>True: the transformer maps rows one to one (so <c>PredictionEngine</c> works).</summary>
    public bool IsRowToRowMapper => true;

    LabelInfo IBatchScorer<TextTokens>.Label => metadata.Label;

    IReadOnlyList<string> IBatchScorer<TextTokens>.InputColumnNames => TextInputReader.InputColumnNames(metadata.Columns);

    /// <summary>Loads an exported model from a file.</summary>
    /// <param name="path">An .onnx file written by <c>LoraTransformer.ExportOnnx</c>.</param>
    /// <param name="inferenceBatchSize">Rows per run in <see cref="Transform"/>; null (default) keeps the exported model's.</param>
    /// <returns>The transformer.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not an ONNX model, or not one written by <c>ExportOnnx</c> (the message says what is missing).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="inferenceBatchSize"/> is less than 1.</exception>
    public static LoraOnnxTransformer Load(string path, int? inferenceBatchSize = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"ONNX model '{path}' does not exist.", path);
        }

        return new LoraOnnxTransformer(File.ReadAllBytes(path), $"'{path}'", inferenceBatchSize);
    }

    /// <summary>Loads an exported model from its bytes (as <see cref="Load(string, int?)"/>).</summary>
    internal static LoraOnnxTransformer FromBytes(byte[] model, string source, int? inferenceBatchSize) => new(model, source, inferenceBatchSize);

    /// <summary>The input columns followed by Score (and PredictedLabel, and Probability for binary classification).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The text column is missing or not text (the message names it).</exception>
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        OutputSchema.CheckTextColumns(inputSchema, metadata.Columns, nameof(inputSchema));
        return OutputSchema.Build(inputSchema, metadata.Columns, metadata.Label);
    }

    /// <summary>A row mapper for <c>PredictionEngine</c>: one run per row.</summary>
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        var mapper = new RowScoringMapper<TextTokens>(this, inputSchema);
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(references == 0, this);
            references++;
        }

        return mapper;
    }

    /// <summary>Lazily adds the prediction columns; one ONNX Runtime run per <see cref="InferenceBatchSize"/> rows.</summary>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        return new BatchScoringView<TextTokens>(input, this);
    }

    Func<TextTokens> IBatchScorer<TextTokens>.CreateInputReader(DataViewRow row) => TextInputReader.Create(row, metadata.Columns, tokenizer);

    bool IBatchScorer<TextTokens>.SameInput(TextTokens a, TextTokens b) => a.SameIds(b);

    /// <summary>Truncates, pads and runs one batch of tokenized rows: row-major [inputs.Count × outputs], what the Score column holds.</summary>
    float[] IBatchScorer<TextTokens>.Predict(IReadOnlyList<TextTokens> inputs)
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(references == 0, this);
        }

        var batch = tokenizer.Pad(inputs.Select(row => tokenizer.EncodeRow(row, metadata.MaxSequenceLength, metadata.Truncation)).ToArray());
        long[] shape = [batch.BatchSize, batch.SequenceLength];
        using var ids = OrtValue.CreateTensorValueFromMemory(batch.InputIds, shape);
        using var mask = OrtValue.CreateTensorValueFromMemory(batch.AttentionMask, shape);
        using var types = OrtValue.CreateTensorValueFromMemory(batch.TokenTypeIds, shape);
        using var options = new RunOptions();
        using var outputs = session.Run(options, OnnxModelMetadata.InputNames, [ids, mask, types], OnnxModelMetadata.OutputNames);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    void IBatchScorer<TextTokens>.AddReference()
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(references == 0, this);
            references++;
        }
    }

    void IBatchScorer<TextTokens>.ReleaseReference() => Dispose();

    void ICanSaveModel.Save(ModelSaveContext ctx) => LoraOnnxModelFile.Save(this, ctx);

    /// <summary>
    /// Releases one reference (see the remarks); the last one releases the ONNX Runtime session, after which predictions
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

        session.Dispose();
    }
}
