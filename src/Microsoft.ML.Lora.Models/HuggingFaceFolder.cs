using System.Text.Json;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>Reads the files of a Hugging Face model folder.</summary>
internal static class HuggingFaceFolder
{
    public const string ConfigFileName = "config.json";
    public const string WeightsFileName = "model.safetensors";
    public const string WeightsIndexFileName = "model.safetensors.index.json";
    public const string PyTorchWeightsFileName = "pytorch_model.bin";
    public const string VocabFileName = "vocab.txt";
    public const string TokenizerConfigFileName = "tokenizer_config.json";
    public const string TokenizerJsonFileName = "tokenizer.json";

    /// <summary>The <c>__metadata__</c> that PyTorch's <c>safetensors.torch.save_file</c> writes, and Hugging Face expects.</summary>
    public static readonly IReadOnlyDictionary<string, string> SafetensorsMetadata = new Dictionary<string, string> { ["format"] = "pt" };

    /// <summary>
    /// The tokenizer of a folder: vocab.txt with tokenizer_config.json's settings, or else the WordPiece vocabulary and
    /// BertNormalizer settings of a fast-tokenizer tokenizer.json.
    /// </summary>
    public static BertTextTokenizer ReadTokenizer(string directory)
    {
        string vocab = Path.Combine(directory, VocabFileName);
        string tokenizerJson = Path.Combine(directory, TokenizerJsonFileName);
        if (File.Exists(vocab) || !File.Exists(tokenizerJson))
        {
            var (lower, strip) = ReadTokenizerSettings(directory);
            return BertTextTokenizer.FromVocabFile(vocab, lower, strip);
        }

        try
        {
            using var document = JsonDocument.Parse(File.ReadAllText(tokenizerJson));
            var root = document.RootElement;
            if (!root.TryGetProperty("model", out var model) || !model.TryGetProperty("type", out var type) || type.GetString() != "WordPiece"
                || !model.TryGetProperty("vocab", out var vocabulary) || vocabulary.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException($"'{tokenizerJson}' is not a WordPiece tokenizer with a \"vocab\" object, and there is no {VocabFileName}.");
            }

            var tokens = vocabulary.EnumerateObject().Select(p => (Token: p.Name, Id: p.Value.GetInt32())).OrderBy(t => t.Id).ToList();
            for (int i = 0; i < tokens.Count; i++)
            {
                if (tokens[i].Id != i)
                {
                    throw new InvalidDataException($"'{tokenizerJson}': vocabulary ids are not 0..{tokens.Count - 1} (id {tokens[i].Id} at position {i}).");
                }
            }

            bool lower = true;
            bool? strip = null;
            if (root.TryGetProperty("normalizer", out var normalizer) && normalizer.ValueKind == JsonValueKind.Object)
            {
                if (normalizer.TryGetProperty("lowercase", out var l) && (l.ValueKind is JsonValueKind.True or JsonValueKind.False))
                {
                    lower = l.GetBoolean();
                }

                if (normalizer.TryGetProperty("strip_accents", out var a) && (a.ValueKind is JsonValueKind.True or JsonValueKind.False))
                {
                    strip = a.GetBoolean();
                }
            }

            using var stream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(string.Join('\n', tokens.Select(t => t.Token)) + "\n"));
            return BertTextTokenizer.FromVocab(stream, lower, strip ?? lower);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{tokenizerJson}' is not valid JSON: {e.Message}", e);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"'{tokenizerJson}': {e.Message}", e);
        }
    }

    /// <summary>Reads model.safetensors, or every shard listed by model.safetensors.index.json, or else pytorch_model.bin.</summary>
    /// <returns>The tensors by checkpoint key (not yet normalized), on the CPU, in their stored dtype.</returns>
    public static Dictionary<string, Tensor> ReadWeights(string directory)
    {
        string single = Path.Combine(directory, WeightsFileName);
        string index = Path.Combine(directory, WeightsIndexFileName);
        if (File.Exists(single))
        {
            return ReadSafetensors(single);
        }

        if (File.Exists(index))
        {
            return ReadSharded(directory, index);
        }

        string pytorch = Path.Combine(directory, PyTorchWeightsFileName);
        if (File.Exists(pytorch))
        {
            return ReadPyTorch(pytorch);
        }

        throw new FileNotFoundException(
            $"'{directory}' has none of {WeightsFileName}, {WeightsIndexFileName}, {PyTorchWeightsFileName}; a Hugging Face folder with weights is expected.",
            single);
    }

    /// <summary>Reads (do_lower_case, strip_accents) from tokenizer_config.json; defaults (true, same as lower case).</summary>
    public static (bool LowerCase, bool StripAccents) ReadTokenizerSettings(string directory)
    {
        string path = Path.Combine(directory, TokenizerConfigFileName);
        bool lower = true;
        bool? strip = null;
        if (File.Exists(path))
        {
            try
            {
                using var document = JsonDocument.Parse(File.ReadAllText(path));
                var root = document.RootElement;
                if (root.TryGetProperty("do_lower_case", out var l) && (l.ValueKind is JsonValueKind.True or JsonValueKind.False))
                {
                    lower = l.GetBoolean();
                }

                if (root.TryGetProperty("strip_accents", out var s) && (s.ValueKind is JsonValueKind.True or JsonValueKind.False))
                {
                    strip = s.GetBoolean();
                }
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"'{path}' is not valid JSON: {e.Message}", e);
            }
        }

        // Hugging Face's BertTokenizer strips accents when strip_accents is unset and lower-casing is on.
        return (lower, strip ?? lower);
    }

    private static Dictionary<string, Tensor> ReadSafetensors(string path)
    {
        try
        {
            return SafeTensors.Read(path).tensors;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' could not be read as safetensors: {e.Message}", e);
        }
    }

    private static Dictionary<string, Tensor> ReadPyTorch(string path)
    {
        System.Collections.Hashtable table;
        try
        {
            table = PyTorchUnpickler.UnpickleStateDict(path);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' could not be read as a PyTorch state dict: {e.Message}", e);
        }

        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (System.Collections.DictionaryEntry entry in table)
        {
            if (entry.Key is string key && entry.Value is Tensor tensor)
            {
                result[key] = tensor;
            }
        }

        return result;
    }

    private static Dictionary<string, Tensor> ReadSharded(string directory, string indexPath)
    {
        Dictionary<string, string> weightMap;
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllText(indexPath));
            if (!document.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException($"'{indexPath}' has no \"weight_map\" object.");
            }

            weightMap = map.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString() ?? string.Empty, StringComparer.Ordinal);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{indexPath}' is not valid JSON: {e.Message}", e);
        }

        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var shard in weightMap.Values.Distinct(StringComparer.Ordinal).OrderBy(s => s, StringComparer.Ordinal))
        {
            if (shard.Length == 0 || Path.IsPathRooted(shard) || shard.Contains("..", StringComparison.Ordinal))
            {
                throw new InvalidDataException($"'{indexPath}' names an invalid shard file '{shard}'.");
            }

            string shardPath = Path.Combine(directory, shard);
            if (!File.Exists(shardPath))
            {
                throw new FileNotFoundException($"Shard '{shard}' listed in '{indexPath}' does not exist.", shardPath);
            }

            foreach (var (key, tensor) in ReadSafetensors(shardPath))
            {
                if (!weightMap.TryGetValue(key, out var owner) || owner != shard)
                {
                    tensor.Dispose();
                    continue;
                }

                result[key] = tensor;
            }
        }

        var absent = weightMap.Keys.Where(k => !result.ContainsKey(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        if (absent.Count > 0)
        {
            throw new InvalidDataException($"'{indexPath}' lists tensors that its shards do not contain: {string.Join(", ", absent)}.");
        }

        return result;
    }
}
