using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// What an exported ONNX model records in its <c>metadata_props</c> so that it scores text on its own: the task and label
/// key values, the column names, the batch size, and the tokenizer (settings and the whole <c>vocab.txt</c>). Written by
/// <c>LoraTransformer.ExportOnnx</c> and read by the ONNX scoring package, which compiles this file too. From layout 2 the
/// truncation strategy (written only when it is not <see cref="TruncationStrategy.Head"/>, so that a reader of layout 1,
/// which would truncate by the head, refuses the file instead of scoring long texts differently).
/// </summary>
internal sealed record OnnxModelMetadata(
    LabelInfo Label, ColumnNames Columns, int InferenceBatchSize, int MaxSequenceLength, bool LowerCase, bool StripAccents, string Vocabulary,
    TruncationStrategy Truncation = TruncationStrategy.Head)
{
    /// <summary>Prefix of every key.</summary>
    public const string Prefix = "microsoft.ml.lora.";

    /// <summary>The graph's inputs, in order (int64 [batch, sequence]); the exporter (OnnxBertExporter) writes these names.</summary>
    public static readonly string[] InputNames = ["input_ids", "attention_mask", "token_type_ids"];

    /// <summary>The graph's output (float32 [batch, outputs]), what the Score column holds.</summary>
    public static readonly string[] OutputNames = ["score"];

    /// <summary>Latest version of this layout (the one this code reads up to); a reader refuses a larger one.</summary>
    public const int FormatVersion = 2;

    /// <summary>The first layout: no truncation key (the head is kept).</summary>
    private const int FormatVersionHeadOnly = 1;

    private const string VersionKey = Prefix + "format_version";
    private const string TaskKey = Prefix + "task";
    private const string ClassCountKey = Prefix + "class_count";
    private const string KeyValueTypeKey = Prefix + "label_key_value_type";
    private const string KeyValuesKey = Prefix + "label_key_values";
    private const string TextColumnKey = Prefix + "text_column";
    private const string PairColumnKey = Prefix + "text_pair_column";
    private const string ScoreColumnKey = Prefix + "score_column";
    private const string PredictedLabelColumnKey = Prefix + "predicted_label_column";
    private const string ProbabilityColumnKey = Prefix + "probability_column";
    private const string BatchSizeKey = Prefix + "inference_batch_size";
    private const string MaxLengthKey = Prefix + "max_sequence_length";
    private const string LowerCaseKey = Prefix + "lower_case";
    private const string StripAccentsKey = Prefix + "strip_accents";
    private const string VocabularyKey = Prefix + "vocab";
    private const string TruncationKey = Prefix + "truncation";

    /// <summary>The key/value pairs to write.</summary>
    public Dictionary<string, string> ToProperties()
    {
        var c = CultureInfo.InvariantCulture;
        var result = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [VersionKey] = (Truncation == TruncationStrategy.Head ? FormatVersionHeadOnly : FormatVersion).ToString(c),
            [TaskKey] = Label.Kind.ToString(),
            [ClassCountKey] = Label.ClassCount.ToString(c),
            [KeyValueTypeKey] = LabelInfo.TypeName(Label.KeyValueType),
            [KeyValuesKey] = JsonSerializer.Serialize(Label.KeyValues?.ToArray() ?? []),
            [TextColumnKey] = Columns.Text,
            [ScoreColumnKey] = Columns.Score,
            [PredictedLabelColumnKey] = Columns.PredictedLabel,
            [ProbabilityColumnKey] = Columns.Probability,
            [BatchSizeKey] = InferenceBatchSize.ToString(c),
            [MaxLengthKey] = MaxSequenceLength.ToString(c),
            [LowerCaseKey] = LowerCase ? "true" : "false",
            [StripAccentsKey] = StripAccents ? "true" : "false",
            [VocabularyKey] = Vocabulary,
        };
        if (Columns.Pair is not null)
        {
            result[PairColumnKey] = Columns.Pair;
        }

        if (Truncation != TruncationStrategy.Head)
        {
            result[TruncationKey] = Truncation.ToString();
        }

        return result;
    }

    /// <summary>Reads the metadata of an exported model.</summary>
    /// <param name="properties">The model's metadata_props.</param>
    /// <param name="source">Names the model in error messages.</param>
    /// <exception cref="InvalidDataException">A key is missing or malformed, or the layout is newer than this reader.</exception>
    public static OnnxModelMetadata FromProperties(IReadOnlyDictionary<string, string> properties, string source)
    {
        ArgumentNullException.ThrowIfNull(properties);
        string Get(string key) => properties.TryGetValue(key, out var value)
            ? value
            : throw new InvalidDataException($"{source} has no metadata '{key}'; it is not a model exported by LoraTransformer.ExportOnnx.");
        int Int(string key) => int.TryParse(Get(key), NumberStyles.Integer, CultureInfo.InvariantCulture, out int value)
            ? value
            : throw new InvalidDataException($"{source}: metadata '{key}' is '{Get(key)}', not an integer.");
        bool Bool(string key) => bool.TryParse(Get(key), out bool value)
            ? value
            : throw new InvalidDataException($"{source}: metadata '{key}' is '{Get(key)}', not true or false.");

        int version = Int(VersionKey);
        if (version > FormatVersion)
        {
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                $"{source} was written in metadata format {version}; this package reads up to {FormatVersion}. Update the package."));
        }

        if (!Enum.TryParse(Get(TaskKey), out LoraTaskKind task) || !Enum.IsDefined(task))
        {
            throw new InvalidDataException($"{source}: metadata '{TaskKey}' is '{Get(TaskKey)}', not a task kind.");
        }

        string[] keyValues = JsonSerializer.Deserialize<string[]>(Get(KeyValuesKey)) ?? [];
        var keyValueType = LabelInfo.ParseTypeName(Get(KeyValueTypeKey));
        var label = LabelInfo.Create(task, Int(ClassCountKey), keyValues.Length > 0 ? keyValueType : null, keyValues.Length > 0 ? keyValues : null);
        var columns = new ColumnNames(
            Get(TextColumnKey), properties.TryGetValue(PairColumnKey, out var pair) ? pair : null,
            Get(ScoreColumnKey), Get(PredictedLabelColumnKey), Get(ProbabilityColumnKey));
        var truncation = TruncationStrategy.Head;
        if (properties.TryGetValue(TruncationKey, out var strategy) && (!Enum.TryParse(strategy, out truncation) || !Enum.IsDefined(truncation)))
        {
            throw new InvalidDataException($"{source}: metadata '{TruncationKey}' is '{strategy}', not a truncation strategy (Head, HeadTail).");
        }

        return new OnnxModelMetadata(label, columns, Int(BatchSizeKey), Int(MaxLengthKey), Bool(LowerCaseKey), Bool(StripAccentsKey), Get(VocabularyKey), truncation);
    }
}
