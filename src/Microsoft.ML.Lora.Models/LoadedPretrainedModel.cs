using System.Text.Json;

namespace Microsoft.ML.Lora.Models;

/// <summary>A loaded pretrained encoder: the TorchSharp model, its tokenizer, and the fingerprint of the weights read.</summary>
public sealed class LoadedPretrainedModel : IDisposable
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    internal LoadedPretrainedModel(BertModel model, BertTextTokenizer tokenizer, string weightsSha256, PretrainedModel source)
    {
        Model = model;
        Tokenizer = tokenizer;
        WeightsSha256 = weightsSha256;
        Source = source;
    }

    /// <summary>The encoder, in evaluation mode, on the device given to <see cref="PretrainedModel.Load"/>.</summary>
    public BertModel Model { get; }

    /// <summary>The tokenizer of the model's vocabulary.</summary>
    public BertTextTokenizer Tokenizer { get; }

    /// <summary>
    /// SHA-256 (64 lowercase hex digits) of the weights as loaded, independent of the file format: over the model's
    /// <c>state_dict()</c> entries (Hugging Face keys, pooler included when present) in ordinal key order, each hashed
    /// as: the key in UTF-8, one 0 byte, the rank as int32 little-endian, each dimension as int64 little-endian, then
    /// the values as float32 little-endian, row-major. The same weights give the same value whether read from ONNX or
    /// safetensors.
    /// </summary>
    public string WeightsSha256 { get; }

    /// <summary>The descriptor this was loaded from.</summary>
    public PretrainedModel Source { get; }

    /// <summary>
    /// Saves the model in Hugging Face layout, so that <see cref="PretrainedModel.FromHuggingFaceFolder"/> reloads it
    /// identically: config.json, model.safetensors (see <see cref="BertModel.SaveHuggingFace"/>), vocab.txt and
    /// tokenizer_config.json (do_lower_case, strip_accents). Each file is written to a temporary file, then moved.
    /// </summary>
    /// <param name="directory">Destination folder; created if missing.</param>
    public void SaveHuggingFace(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        Model.SaveHuggingFace(directory);
        AtomicFile.WriteText(Path.Combine(directory, HuggingFaceFolder.VocabFileName), Tokenizer.VocabularyText);
        var tokenizerConfig = new Dictionary<string, object>
        {
            ["tokenizer_class"] = "BertTokenizer",
            ["do_lower_case"] = Tokenizer.LowerCase,
            ["strip_accents"] = Tokenizer.StripAccents,
            ["model_max_length"] = Model.Config.MaxPositionEmbeddings,
        };
        AtomicFile.WriteText(
            Path.Combine(directory, HuggingFaceFolder.TokenizerConfigFileName),
            JsonSerializer.Serialize(tokenizerConfig, Indented));
    }

    /// <summary>Disposes the model's tensors.</summary>
    public void Dispose() => Model.Dispose();
}
