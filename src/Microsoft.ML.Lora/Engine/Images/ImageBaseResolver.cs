using Microsoft.ML.Lora.Models.Vision;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>
/// Finds the image base a saved model was trained on by its SHA-256, in order: a base already held in this process
/// (<see cref="BaseModelCache"/>: nothing is read), the recorded paths, the environment variable
/// <see cref="LoraBaseModels.BaseModelVariable"/> (a ResNet .onnx file, its preprocessing graph beside it as the
/// DnnImageFeaturizer package lays them out), ML.NET's ResNet-18 in the application's folder (<see cref="DnnImageModels"/>),
/// then each of <see cref="LoraBaseModels.SearchDirectories"/> (with or without the package's <c>DnnImageModels/</c>
/// folder). A candidate with other weights is never used; the error lists every place tried.
/// </summary>
internal static class ImageBaseResolver
{
    /// <returns>A lease the caller owns, and the files of the base used (to record when the model is saved again).</returns>
    /// <exception cref="InvalidDataException">No candidate matched, and at least one had other weights (all places listed).</exception>
    /// <exception cref="FileNotFoundException">No candidate matched and none had other weights (all places listed).</exception>
    public static (BaseModelCache.Lease<LoadedImageBase> Lease, ImageBase Found) Resolve(ImageBase recorded, string sha256, Device device)
    {
        if (BaseModelCache.TryAcquire<LoadedImageBase>(sha256, device, ScalarType.Float32) is { } cached)
        {
            return (cached, cached.Base.Source);
        }

        var candidates = new List<(ImageBase Base, string Label)> { (recorded, "the recorded location") };
        if (Environment.GetEnvironmentVariable(LoraBaseModels.BaseModelVariable) is { Length: > 0 } variable)
        {
            candidates.Add((ImageBase.From(variable, null), $"environment variable {LoraBaseModels.BaseModelVariable}"));
        }

        candidates.Add((ImageBase.From(null, null), "the application's folder"));
        foreach (var directory in LoraBaseModels.SearchDirectories)
        {
            candidates.Add((ImageBase.From(Path.Combine(directory, DnnImageModels.ResNet18RelativePath), null), $"search directory '{directory}'"));
            candidates.Add((ImageBase.From(Path.Combine(directory, "ResNet18Onnx", "ResNet18.onnx"), null), $"search directory '{directory}'"));
        }

        var tried = new List<string> { "bases loaded in this process: none with this SHA-256" };
        bool otherWeights = false;
        foreach (var (candidate, label) in candidates.DistinctBy(c => c.Base))
        {
            if (!File.Exists(candidate.ModelPath) || !File.Exists(candidate.PreprocessPath))
            {
                tried.Add($"{label}: {candidate.ModelPath} with {candidate.PreprocessPath}: not found");
                continue;
            }

            // Files fingerprinted before in this process are not read again to learn that they hold another base.
            if (candidate.KnownSha256() is { } known && !string.Equals(known, sha256, StringComparison.Ordinal))
            {
                tried.Add($"{label}: {candidate.ModelPath}: weights SHA-256 {known} (another base)");
                otherWeights = true;
                continue;
            }

            LoadedImageBase loaded;
            try
            {
                loaded = candidate.Load(device);
            }
            catch (InvalidDataException e)
            {
                tried.Add($"{label}: {candidate.ModelPath}: could not be loaded ({e.Message})");
                continue;
            }

            if (string.Equals(loaded.WeightsSha256, sha256, StringComparison.Ordinal))
            {
                return (BaseModelCache.AddLoaded(loaded.WeightsSha256, loaded, device, ScalarType.Float32, ImageBase.Freeze), candidate);
            }

            tried.Add($"{label}: {candidate.ModelPath}: weights SHA-256 {loaded.WeightsSha256} (another base)");
            otherWeights = true;
            loaded.Dispose();
        }

        string message = $"The base image model with weights SHA-256 {sha256} was not found. Tried: {string.Join("; ", tried)}. " +
            $"Set {LoraBaseModels.BaseModelVariable} to its ResNet .onnx file, or reference the NuGet package Microsoft.ML.DnnImageFeaturizer.ResNet18.";
        throw otherWeights ? new InvalidDataException(message) : new FileNotFoundException(message);
    }
}
