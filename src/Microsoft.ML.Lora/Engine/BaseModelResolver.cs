using System.Globalization;
using System.Text;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// Finds the base a model file was trained on by its weights SHA-256, in the order <see cref="LoraBaseModels"/> documents,
/// and leases it from <see cref="BaseModelCache"/>. A candidate is used only when its weights have the wanted SHA-256.
/// </summary>
internal static class BaseModelResolver
{
    /// <summary>The base with weights <paramref name="sha256"/> on <paramref name="device"/> in <paramref name="dtype"/>.</summary>
    /// <param name="recorded">The descriptor the model file records.</param>
    /// <param name="sha256">The weights fingerprint the model file records.</param>
    /// <param name="device">The device.</param>
    /// <param name="dtype">The encoder dtype.</param>
    /// <param name="found">The descriptor of the base used (to record when the model is saved again).</param>
    /// <returns>A lease the caller owns.</returns>
    /// <exception cref="InvalidDataException">No candidate matched, and at least one had other weights (all places listed).</exception>
    /// <exception cref="FileNotFoundException">No candidate matched and none had other weights (all places listed).</exception>
    public static BaseModelCache.Lease<LoadedPretrainedModel> Resolve(PretrainedModel recorded, string sha256, Device device, ScalarType dtype, out PretrainedModel found)
    {
        var tried = new List<string>();
        bool otherWeights = false;

        BaseModelCache.Lease<LoadedPretrainedModel>? Try(PretrainedModel candidate, string label)
        {
            if (FingerprintCache.TryGet(candidate, out string known))
            {
                if (!string.Equals(known, sha256, StringComparison.Ordinal))
                {
                    tried.Add($"{label}: weights SHA-256 {known} (another base)");
                    otherWeights = true;
                    return null;
                }

                return BaseModelCache.AcquireOrLoad(candidate, device, dtype);
            }

            LoadedPretrainedModel loaded;
            try
            {
                loaded = candidate.Load(device);
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or ArgumentException or InvalidOperationException)
            {
                tried.Add($"{label}: could not be loaded ({e.Message})");
                return null;
            }

            if (!string.Equals(loaded.WeightsSha256, sha256, StringComparison.Ordinal))
            {
                tried.Add($"{label}: weights SHA-256 {loaded.WeightsSha256} (another base)");
                otherWeights = true;
                loaded.Dispose();
                return null;
            }

            return BaseModelCache.Add(loaded, device, dtype);
        }

        // 1. The embedded MiniLM, by itself.
        if (recorded.Kind == PretrainedModelKind.Embedded && Try(recorded, $"embedded model '{recorded.Location}'") is { } embedded)
        {
            found = recorded;
            return embedded;
        }

        // 2. Bases already loaded in this process.
        if (BaseModelCache.TryAcquire<LoadedPretrainedModel>(sha256, device, dtype) is { } cached)
        {
            found = cached.Base.Source;
            return cached;
        }

        var held = BaseModelCache.HeldFingerprints();
        tried.Add(held.Count == 0 ? "bases loaded in this process: none" : $"bases loaded in this process: {held.Count}, SHA-256 {string.Join(", ", held)}");

        // 3. The environment variable, registered bases, search directories.
        foreach (var (candidate, label) in AppCandidates(recorded, tried))
        {
            if (Try(candidate, label) is { } lease)
            {
                found = candidate;
                return lease;
            }
        }

        // 4. The recorded location.
        if (recorded.Kind != PretrainedModelKind.Embedded && Try(recorded, $"recorded location '{recorded.Location}'") is { } atRecorded)
        {
            found = recorded;
            return atRecorded;
        }

        var message = new StringBuilder()
            .Append(CultureInfo.InvariantCulture, $"This LoRA model file needs its base model ({recorded.Kind}, recorded at '{recorded.Location}') with weights SHA-256 {sha256}, ")
            .Append("and no base with those weights was found; an adapter only works on the exact weights it was trained with. Tried, in order:");
        for (int i = 0; i < tried.Count; i++)
        {
            message.Append(CultureInfo.InvariantCulture, $"\n  {i + 1}. {tried[i]}");
        }

        message.Append(CultureInfo.InvariantCulture, $"\nRegister the base (LoraBaseModels.Register(PretrainedModel.FromHuggingFaceFolder(folder)) or LoraBaseModels.AddSearchDirectory(parent)) before loading, ")
            .Append(CultureInfo.InvariantCulture, $"list its parent folder in the environment variable {LoraBaseModels.SearchPathVariable}, ")
            .Append(CultureInfo.InvariantCulture, $"or set {LoraBaseModels.BaseModelVariable} to the base model's folder (Hugging Face) or .onnx file.");
        throw otherWeights
            ? new InvalidDataException(message.ToString())
            : new FileNotFoundException(message.ToString(), recorded.Location);
    }

    /// <summary>The candidates the app supplies, in order; places that give none are noted in <paramref name="tried"/>.</summary>
    private static IEnumerable<(PretrainedModel, string)> AppCandidates(PretrainedModel recorded, List<string> tried)
    {
        string? single = Environment.GetEnvironmentVariable(LoraBaseModels.BaseModelVariable);
        if (!string.IsNullOrWhiteSpace(single))
        {
            string label = $"{LoraBaseModels.BaseModelVariable} = '{single}'";
            var candidate = FromPath(single, recorded);
            if (candidate is null)
            {
                tried.Add($"{label}: neither a Hugging Face model folder nor an .onnx file with vocab.txt beside it");
            }
            else
            {
                yield return (candidate, label);
            }
        }
        else
        {
            tried.Add($"{LoraBaseModels.BaseModelVariable}: not set");
        }

        var registered = LoraBaseModels.Registered;
        if (registered.Count == 0)
        {
            tried.Add("registered bases (LoraBaseModels.Register): none");
        }

        foreach (var candidate in registered)
        {
            yield return (candidate, $"registered base {candidate}");
        }

        var directories = LoraBaseModels.SearchDirectories.Select(d => (d, "search directory")).ToList();
        foreach (var part in (Environment.GetEnvironmentVariable(LoraBaseModels.SearchPathVariable) ?? string.Empty)
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            directories.Add((Path.GetFullPath(part), $"{LoraBaseModels.SearchPathVariable} directory"));
        }

        if (directories.Count == 0)
        {
            tried.Add($"search directories (LoraBaseModels.AddSearchDirectory, {LoraBaseModels.SearchPathVariable}): none");
        }

        foreach (var (directory, kind) in directories)
        {
            var found = InDirectory(directory, recorded).ToList();
            if (found.Count == 0)
            {
                tried.Add(Directory.Exists(directory) ? $"{kind} '{directory}': no model folder or .onnx file" : $"{kind} '{directory}': does not exist");
            }

            foreach (var candidate in found)
            {
                yield return (candidate, $"{kind} '{directory}': {candidate}");
            }
        }
    }

    /// <summary>A folder (Hugging Face) or an .onnx file with vocab.txt beside it; null when it is neither.</summary>
    private static PretrainedModel? FromPath(string path, PretrainedModel recorded)
    {
        if (Directory.Exists(path))
        {
            return PretrainedModel.FromHuggingFaceFolder(path);
        }

        if (File.Exists(path) && path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase))
        {
            string vocab = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "vocab.txt");
            if (!File.Exists(vocab) && recorded.VocabularyPath is { } recordedVocab && File.Exists(recordedVocab))
            {
                vocab = recordedVocab;
            }

            return File.Exists(vocab) ? PretrainedModel.FromOnnx(path, vocab, recorded.NumAttentionHeads, recorded.LowerCase) : null;
        }

        return null;
    }

    /// <summary>Model folders and .onnx files in <paramref name="directory"/> and its immediate subdirectories; same-named ones first.</summary>
    private static IEnumerable<PretrainedModel> InDirectory(string directory, PretrainedModel recorded)
    {
        if (!Directory.Exists(directory))
        {
            return [];
        }

        var places = new List<string> { directory };
        places.AddRange(Directory.GetDirectories(directory).Order(StringComparer.Ordinal));
        var result = new List<PretrainedModel>();
        foreach (var place in places)
        {
            if (File.Exists(Path.Combine(place, "config.json")))
            {
                result.Add(PretrainedModel.FromHuggingFaceFolder(place));
            }

            foreach (var onnx in Directory.GetFiles(place, "*.onnx").Order(StringComparer.Ordinal))
            {
                if (FromPath(onnx, recorded) is { } candidate)
                {
                    result.Add(candidate);
                }
            }
        }

        string wanted = Path.GetFileName(recorded.Location.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
        return result.OrderBy(c => Path.GetFileName(c.Location.TrimEnd(Path.DirectorySeparatorChar)) == wanted ? 0 : 1);
    }
}
