using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>
/// A pretrained image base as files: the ResNet ONNX model and its preprocessing graph (the mean image it subtracts).
/// Identified by the SHA-256 of what the model computes with (<see cref="WeightsFingerprint"/> over the network's
/// parameters and BatchNorm statistics, the mean image and the channel order), not by its path.
/// </summary>
/// <param name="ModelPath">The ResNet .onnx file (e.g. <see cref="DnnImageModels.ResNet18Path"/>).</param>
/// <param name="PreprocessPath">The preprocessing .onnx file (e.g. <see cref="DnnImageModels.ResNetPreprocessPath"/>).</param>
internal sealed record ImageBase(string ModelPath, string PreprocessPath)
{
    /// <summary>The preprocessing graph where the DnnImageFeaturizer package puts it beside a model: <c>../ResNetPrepOnnx/ResNetPreprocess.onnx</c>.</summary>
    public static string PreprocessBeside(string modelPath)
    {
        string? modelFolder = Path.GetDirectoryName(Path.GetFullPath(modelPath));
        string root = Path.GetDirectoryName(modelFolder ?? ".") ?? ".";
        return Path.Combine(root, "ResNetPrepOnnx", "ResNetPreprocess.onnx");
    }

    /// <summary>The base of the options: the given paths, or ML.NET's ResNet-18 in the application's folder.</summary>
    public static ImageBase From(string? modelPath, string? preprocessPath)
    {
        string model = Path.GetFullPath(modelPath ?? DnnImageModels.ResNet18Path());
        return new ImageBase(model, Path.GetFullPath(preprocessPath ?? PreprocessBeside(model)));
    }

    /// <summary>
    /// The fingerprint of these files as they are now if it was computed before in this process (same paths, sizes and
    /// last-write times), else null.
    /// </summary>
    public string? KnownSha256() => FingerprintCache.TryGet(Stamp(), out string sha) ? sha : null;

    /// <summary>
    /// A lease on this base from <see cref="BaseModelCache"/>: the held copy when these files were fingerprinted before
    /// (nothing is read), else loaded (<see cref="Load"/>) and added.
    /// </summary>
    /// <exception cref="FileNotFoundException">A file is missing.</exception>
    public BaseModelCache.Lease<LoadedImageBase> Acquire(Device device) =>
        BaseModelCache.AcquireOrLoad(KnownSha256(), device, ScalarType.Float32, () =>
        {
            var loaded = Load(device);
            return (loaded, loaded.WeightsSha256);
        }, Freeze);

    /// <summary>
    /// Loads the network without a head and the normalisation, and fingerprints them (the fingerprint is remembered by the
    /// files' stamp, see <see cref="KnownSha256"/>).
    /// </summary>
    /// <exception cref="FileNotFoundException">A file is missing (the message names it and says where ML.NET's ResNet-18 comes from).</exception>
    public LoadedImageBase Load(Device device)
    {
        foreach (var (path, what) in new[] { (ModelPath, "image model"), (PreprocessPath, "preprocessing model") })
        {
            if (!File.Exists(path))
            {
                throw new FileNotFoundException(
                    $"The base {what} '{path}' does not exist. ML.NET's ResNet-18 comes with the NuGet package Microsoft.ML.DnnImageFeaturizer.ResNet18, " +
                    $"which copies it to {DnnImageModels.ResNet18RelativePath} and {DnnImageModels.ResNetPreprocessRelativePath} in the output folder of a project that references it.", path);
            }
        }

        string? stamp = Stamp();
        var normalization = ImageNormalization.FromOnnx(PreprocessPath);
        ResNet? model = null;
        try
        {
            model = ResNet.FromOnnx(ModelPath);
            var weights = model.state_dict().ToList();
            using var order = tensor(normalization.ChannelOrder.Select(i => (float)i).ToArray());
            weights.Add(new("preprocess.mean_image", normalization.MeanImage));
            weights.Add(new("preprocess.channel_order", order));
            string sha = WeightsFingerprint.Compute(weights);
            FingerprintCache.Remember(stamp, sha);
            model.to(device);
            return new LoadedImageBase(model, normalization, sha, this);
        }
        catch
        {
            model?.Dispose();
            normalization.Dispose();
            throw;
        }
    }

    /// <summary>Readies a loaded base for sharing: every tensor frozen (BatchNorm already uses its stored statistics).</summary>
    public static void Freeze(LoadedImageBase loaded)
    {
        foreach (var parameter in loaded.Model.parameters())
        {
            parameter.requires_grad = false;
        }

        loaded.Model.eval();
    }

    /// <summary>The stamp of both files (full path, size, last-write time), or null when one is missing.</summary>
    private string? Stamp() => FingerprintCache.Stamp("resnet-onnx", [ModelPath, PreprocessPath]);
}
