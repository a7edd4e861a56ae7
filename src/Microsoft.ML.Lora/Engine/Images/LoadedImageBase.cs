using Microsoft.ML.Lora.Models.Vision;

namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>
/// A loaded image base, as <see cref="BaseModelCache"/> holds it once for every image model on it: the ResNet without a
/// head (frozen, in evaluation mode), its input normalisation, the fingerprint of both and the files they came from.
/// Models alias its tensors (<see cref="ResNet.ShareWeights"/>) and read the normalisation; none changes them.
/// </summary>
internal sealed class LoadedImageBase : IDisposable
{
    public LoadedImageBase(ResNet model, ImageNormalization normalization, string weightsSha256, ImageBase source)
    {
        Model = model;
        Normalization = normalization;
        WeightsSha256 = weightsSha256;
        Source = source;
    }

    /// <summary>The network without a head (returns the pooled features).</summary>
    public ResNet Model { get; }

    public ImageNormalization Normalization { get; }

    /// <summary>See <see cref="ImageBase.Load"/>.</summary>
    public string WeightsSha256 { get; }

    /// <summary>The files it was read from (recorded when a model on it is saved).</summary>
    public ImageBase Source { get; }

    public void Dispose()
    {
        Model.Dispose();
        Normalization.Dispose();
    }
}
