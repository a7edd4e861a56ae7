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

    /// <summary>Loads the network (with a head of <paramref name="outputs"/> outputs, <c>fc</c>) and the normalisation, and fingerprints the base.</summary>
    /// <exception cref="FileNotFoundException">A file is missing (the message names it and says where ML.NET's ResNet-18 comes from).</exception>
    public (ResNet Model, ImageNormalization Normalization, string Sha256) Load(int outputs, Device device)
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

        var normalization = ImageNormalization.FromOnnx(PreprocessPath);
        ResNet? model = null;
        try
        {
            model = ResNet.FromOnnx(ModelPath, outputs);
            var weights = model.state_dict().Where(p => !p.Key.StartsWith("fc.", StringComparison.Ordinal)).ToList();
            using var order = tensor(normalization.ChannelOrder.Select(i => (float)i).ToArray());
            weights.Add(new("preprocess.mean_image", normalization.MeanImage));
            weights.Add(new("preprocess.channel_order", order));
            string sha = WeightsFingerprint.Compute(weights);
            model.to(device);
            return (model, normalization, sha);
        }
        catch
        {
            model?.Dispose();
            normalization.Dispose();
            throw;
        }
    }
}
