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
    public const string VocabFileName = "vocab.txt";
    public const string TokenizerConfigFileName = "tokenizer_config.json";

    /// <summary>Reads model.safetensors, or every shard listed by model.safetensors.index.json.</summary>
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

        throw new FileNotFoundException(
            $"'{directory}' has neither {WeightsFileName} nor {WeightsIndexFileName}; a Hugging Face folder with safetensors weights is expected.",
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
            return Safetensors.LoadStateDict(path);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' could not be read as safetensors: {e.Message}", e);
        }
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
