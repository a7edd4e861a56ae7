using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Hyper-parameters of a BERT encoder, read from and written to a Hugging Face <c>config.json</c>
/// (same field names, e.g. <c>hidden_size</c>, <c>num_attention_heads</c>). Unknown fields are kept and written back,
/// so a round trip through this class does not lose information.
/// </summary>
public sealed class BertConfig
{
    private static readonly string[] SupportedActivations = ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"];

    private static readonly JsonSerializerOptions WriteOptions = new() { WriteIndented = true };

    /// <summary>Model type written to <c>model_type</c>; "bert".</summary>
    [JsonPropertyName("model_type")]
    public string ModelType { get; set; } = "bert";

    /// <summary>Number of tokens in the vocabulary (<c>vocab_size</c>). Default 30522.</summary>
    [JsonPropertyName("vocab_size")]
    public int VocabSize { get; set; } = 30522;

    /// <summary>Width of the hidden states (<c>hidden_size</c>). Default 768.</summary>
    [JsonPropertyName("hidden_size")]
    public int HiddenSize { get; set; } = 768;

    /// <summary>Number of encoder layers (<c>num_hidden_layers</c>). Default 12.</summary>
    [JsonPropertyName("num_hidden_layers")]
    public int NumHiddenLayers { get; set; } = 12;

    /// <summary>Number of attention heads; must divide <see cref="HiddenSize"/> (<c>num_attention_heads</c>). Default 12.</summary>
    [JsonPropertyName("num_attention_heads")]
    public int NumAttentionHeads { get; set; } = 12;

    /// <summary>Width of the feed-forward layer (<c>intermediate_size</c>). Default 3072.</summary>
    [JsonPropertyName("intermediate_size")]
    public int IntermediateSize { get; set; } = 3072;

    /// <summary>
    /// Feed-forward activation (<c>hidden_act</c>): "gelu" (erf form), "gelu_new" / "gelu_pytorch_tanh" / "gelu_fast"
    /// (tanh approximation), "relu", "silu" / "swish". Default "gelu".
    /// </summary>
    [JsonPropertyName("hidden_act")]
    public string HiddenAct { get; set; } = "gelu";

    /// <summary>Dropout probability after embeddings, attention output and feed-forward output (<c>hidden_dropout_prob</c>). Default 0.1.</summary>
    [JsonPropertyName("hidden_dropout_prob")]
    public double HiddenDropoutProb { get; set; } = 0.1;

    /// <summary>Dropout probability on the attention weights (<c>attention_probs_dropout_prob</c>). Default 0.1.</summary>
    [JsonPropertyName("attention_probs_dropout_prob")]
    public double AttentionProbsDropoutProb { get; set; } = 0.1;

    /// <summary>Longest sequence the position embeddings cover (<c>max_position_embeddings</c>). Default 512.</summary>
    [JsonPropertyName("max_position_embeddings")]
    public int MaxPositionEmbeddings { get; set; } = 512;

    /// <summary>Number of token types (segments) (<c>type_vocab_size</c>). Default 2.</summary>
    [JsonPropertyName("type_vocab_size")]
    public int TypeVocabSize { get; set; } = 2;

    /// <summary>Standard deviation of the normal initialisation of new weights (<c>initializer_range</c>). Default 0.02.</summary>
    [JsonPropertyName("initializer_range")]
    public double InitializerRange { get; set; } = 0.02;

    /// <summary>Epsilon of every LayerNorm (<c>layer_norm_eps</c>). Default 1e-12.</summary>
    [JsonPropertyName("layer_norm_eps")]
    public double LayerNormEps { get; set; } = 1e-12;

    /// <summary>Id of the padding token (<c>pad_token_id</c>). Default 0.</summary>
    [JsonPropertyName("pad_token_id")]
    public int PadTokenId { get; set; }

    /// <summary>Kind of position embedding (<c>position_embedding_type</c>); only "absolute" is supported. Default "absolute".</summary>
    [JsonPropertyName("position_embedding_type")]
    public string PositionEmbeddingType { get; set; } = "absolute";

    /// <summary>Fields of config.json this class does not model; kept so that they are written back unchanged.</summary>
    [JsonExtensionData]
    [JsonInclude]
    internal Dictionary<string, JsonElement>? ExtensionData { get; set; }

    /// <summary>Size of one attention head: <see cref="HiddenSize"/> / <see cref="NumAttentionHeads"/>.</summary>
    [JsonIgnore]
    public int HeadSize => HiddenSize / NumAttentionHeads;

    /// <summary>Parses a Hugging Face config.json text and validates it (see <see cref="Validate"/>).</summary>
    /// <param name="json">The JSON text.</param>
    /// <returns>The configuration.</returns>
    /// <exception cref="ArgumentException">The JSON is malformed or a field has an invalid value (the message names the field).</exception>
    public static BertConfig FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        BertConfig? config;
        try
        {
            config = JsonSerializer.Deserialize<BertConfig>(json);
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"Not a valid BERT config.json: {e.Message}", nameof(json), e);
        }

        if (config is null)
        {
            throw new ArgumentException("Not a valid BERT config.json: the JSON is null.", nameof(json));
        }

        string? problem = config.FindProblem();
        if (problem is not null)
        {
            throw new ArgumentException($"Invalid BERT config.json: {problem}", nameof(json));
        }

        return config;
    }

    /// <summary>Reads and validates a Hugging Face config.json file.</summary>
    /// <param name="path">Path of the config.json file.</param>
    /// <returns>The configuration.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a valid BERT configuration (the message names the file and the field).</exception>
    public static BertConfig Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"BERT config file '{path}' does not exist.", path);
        }

        try
        {
            return FromJson(File.ReadAllText(path));
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"'{path}': {e.Message}", e);
        }
    }

    /// <summary>Writes the configuration as indented Hugging Face config.json text (including fields it did not model).</summary>
    /// <returns>The JSON text.</returns>
    public string ToJson() => JsonSerializer.Serialize(this, WriteOptions);

    /// <summary>Writes config.json to <paramref name="path"/> through a temporary file, so the file is never half-written.</summary>
    /// <param name="path">Destination path.</param>
    public void Save(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        AtomicFile.WriteText(path, ToJson());
    }

    /// <summary>Creates an independent copy of this configuration.</summary>
    /// <returns>The copy.</returns>
    public BertConfig Clone() => JsonSerializer.Deserialize<BertConfig>(ToJson())!;

    /// <summary>Checks that every size is positive, heads divide the hidden size, probabilities are in [0, 1) and the activation is supported.</summary>
    /// <exception cref="ArgumentException">A field has an invalid value; the message names the config.json field.</exception>
    public void Validate()
    {
        string? problem = FindProblem();
        if (problem is not null)
        {
            throw new ArgumentException(problem, "config");
        }
    }

    internal static bool IsSupportedActivation(string name) => SupportedActivations.Contains(name, StringComparer.Ordinal);

    private string? FindProblem()
    {
        static string Positive(string field, long value) => $"'{field}' must be positive, but is {value.ToString(CultureInfo.InvariantCulture)}.";

        if (ModelType != "bert")
        {
            return $"'model_type' is '{ModelType}', only 'bert' is supported.";
        }

        if (VocabSize <= 0) return Positive("vocab_size", VocabSize);
        if (HiddenSize <= 0) return Positive("hidden_size", HiddenSize);
        if (NumHiddenLayers <= 0) return Positive("num_hidden_layers", NumHiddenLayers);
        if (NumAttentionHeads <= 0) return Positive("num_attention_heads", NumAttentionHeads);
        if (IntermediateSize <= 0) return Positive("intermediate_size", IntermediateSize);
        if (MaxPositionEmbeddings <= 0) return Positive("max_position_embeddings", MaxPositionEmbeddings);
        if (TypeVocabSize <= 0) return Positive("type_vocab_size", TypeVocabSize);
        if (HiddenSize % NumAttentionHeads != 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"'hidden_size' ({HiddenSize}) must be a multiple of 'num_attention_heads' ({NumAttentionHeads}).");
        }

        if (!(HiddenDropoutProb >= 0 && HiddenDropoutProb < 1))
        {
            return string.Create(CultureInfo.InvariantCulture, $"'hidden_dropout_prob' must be in [0, 1), but is {HiddenDropoutProb}.");
        }

        if (!(AttentionProbsDropoutProb >= 0 && AttentionProbsDropoutProb < 1))
        {
            return string.Create(CultureInfo.InvariantCulture, $"'attention_probs_dropout_prob' must be in [0, 1), but is {AttentionProbsDropoutProb}.");
        }

        if (!(LayerNormEps > 0))
        {
            return string.Create(CultureInfo.InvariantCulture, $"'layer_norm_eps' must be positive, but is {LayerNormEps}.");
        }

        if (HiddenAct is null || !IsSupportedActivation(HiddenAct))
        {
            return $"'hidden_act' is '{HiddenAct}', expected one of: {string.Join(", ", SupportedActivations)}.";
        }

        if (PositionEmbeddingType != "absolute")
        {
            return $"'position_embedding_type' is '{PositionEmbeddingType}', only 'absolute' is supported.";
        }

        if (PadTokenId < 0 || PadTokenId >= VocabSize)
        {
            return string.Create(CultureInfo.InvariantCulture, $"'pad_token_id' ({PadTokenId}) must be in [0, vocab_size = {VocabSize}).");
        }

        return null;
    }
}
