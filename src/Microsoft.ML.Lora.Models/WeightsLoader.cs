using System.Globalization;
using System.Text;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>Copies named tensors into a <see cref="BertModel"/>, strictly: every key must match in name and shape.</summary>
internal static class WeightsLoader
{
    /// <summary>Keys that checkpoints may carry but that are not weights of the encoder.</summary>
    private static readonly string[] IgnoredKeys = ["embeddings.position_ids"];

    /// <summary>
    /// Maps checkpoint keys to <see cref="BertModel"/> keys: strips a leading <c>bert.</c> (then drops keys outside
    /// it, e.g. heads such as <c>cls.*</c> or <c>classifier.*</c>), renames TensorFlow-era <c>LayerNorm.gamma/beta</c>,
    /// drops buffers that are not weights (<c>embeddings.position_ids</c>).
    /// </summary>
    public static Dictionary<string, Tensor> NormalizeKeys(IReadOnlyDictionary<string, Tensor> tensors)
    {
        bool prefixed = tensors.Keys.Any(k => k.StartsWith("bert.", StringComparison.Ordinal));
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (rawKey, tensor) in tensors)
        {
            string key = rawKey;
            if (prefixed)
            {
                if (!key.StartsWith("bert.", StringComparison.Ordinal))
                {
                    continue;
                }

                key = key["bert.".Length..];
            }

            if (key.EndsWith("LayerNorm.gamma", StringComparison.Ordinal))
            {
                key = key[..^"gamma".Length] + "weight";
            }
            else if (key.EndsWith("LayerNorm.beta", StringComparison.Ordinal))
            {
                key = key[..^"beta".Length] + "bias";
            }

            if (IgnoredKeys.Contains(key, StringComparer.Ordinal))
            {
                continue;
            }

            result[key] = tensor;
        }

        return result;
    }

    /// <summary>Whether the weights include the pooler.</summary>
    public static bool HasPooler(IReadOnlyDictionary<string, Tensor> normalized) =>
        normalized.ContainsKey("pooler.dense.weight");

    /// <summary>Copies <paramref name="weights"/> (normalized keys) into <paramref name="model"/>.</summary>
    /// <exception cref="InvalidDataException">Keys are missing, unexpected or of another shape; all of them are listed with <paramref name="source"/>.</exception>
    public static void Load(BertModel model, IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        var expected = model.BaseStateDict();
        var missing = expected.Keys.Where(k => !weights.ContainsKey(k)).ToList();
        var unexpected = weights.Keys.Where(k => !expected.ContainsKey(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var mismatched = expected
            .Where(p => weights.TryGetValue(p.Key, out var t) && !t.shape.SequenceEqual(p.Value.shape))
            .Select(p => $"{p.Key} (model [{string.Join(", ", p.Value.shape)}], weights [{string.Join(", ", weights[p.Key].shape)}])")
            .ToList();
        if (missing.Count > 0 || unexpected.Count > 0 || mismatched.Count > 0)
        {
            var message = new StringBuilder($"The weights from {source} do not fit the BERT model built from its configuration.");
            if (missing.Count > 0)
            {
                message.Append(CultureInfo.InvariantCulture, $" Missing ({missing.Count}): {string.Join(", ", missing)}.");
            }

            if (unexpected.Count > 0)
            {
                message.Append(CultureInfo.InvariantCulture, $" Unexpected ({unexpected.Count}): {string.Join(", ", unexpected)}.");
            }

            if (mismatched.Count > 0)
            {
                message.Append(CultureInfo.InvariantCulture, $" Shape mismatch ({mismatched.Count}): {string.Join("; ", mismatched)}.");
            }

            throw new InvalidDataException(message.ToString());
        }

        using var noGrad = no_grad();
        foreach (var (key, target) in expected)
        {
            using var source32 = weights[key].to_type(target.dtype);
            target.copy_(source32);
        }
    }
}
