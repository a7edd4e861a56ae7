namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// Where the NuGet package <c>Microsoft.ML.DnnImageFeaturizer.ResNet18</c> puts its models: its build props copy
/// <c>tools/DnnImageModels/**</c> to <c>DnnImageModels/</c> in the output folder of any project that references it.
/// This library does not reference the package; an application (or test project) that does gets the files next to its
/// binaries.
/// </summary>
public static class DnnImageModels
{
    /// <summary>Path of the ResNet-18 model relative to the output folder.</summary>
    public const string ResNet18RelativePath = "DnnImageModels/ResNet18Onnx/ResNet18.onnx";

    /// <summary>Path of its preprocessing graph relative to the output folder.</summary>
    public const string ResNetPreprocessRelativePath = "DnnImageModels/ResNetPrepOnnx/ResNetPreprocess.onnx";

    /// <summary>The ResNet-18 ONNX file under <paramref name="baseDirectory"/> (default: the application's folder).</summary>
    /// <param name="baseDirectory">The output folder; default <see cref="AppContext.BaseDirectory"/>.</param>
    /// <returns>The full path (the file may not exist when the package is not referenced).</returns>
    public static string ResNet18Path(string? baseDirectory = null) =>
        Path.GetFullPath(Path.Combine(baseDirectory ?? AppContext.BaseDirectory, ResNet18RelativePath));

    /// <summary>The preprocessing ONNX file under <paramref name="baseDirectory"/> (default: the application's folder).</summary>
    /// <param name="baseDirectory">The output folder; default <see cref="AppContext.BaseDirectory"/>.</param>
    /// <returns>The full path (the file may not exist when the package is not referenced).</returns>
    public static string ResNetPreprocessPath(string? baseDirectory = null) =>
        Path.GetFullPath(Path.Combine(baseDirectory ?? AppContext.BaseDirectory, ResNetPreprocessRelativePath));
}
