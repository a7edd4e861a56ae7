using Microsoft.ML.Data;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Internal;

namespace Microsoft.ML;

/// <summary>LoRA fine-tuning in ML.NET pipelines: <c>mlContext.Transforms.LoraFineTune(...)</c>.</summary>
public static class LoraCatalog
{
    /// <summary>Fine-tunes a pretrained text encoder with LoRA; see <see cref="LoraFineTuningOptions"/> for the settings and their defaults.</summary>
    /// <param name="catalog">The transforms catalog (<c>mlContext.Transforms</c>).</param>
    /// <param name="options">Columns, base model, adapter shape and training schedule.</param>
    /// <returns>An estimator whose <c>Fit</c> returns a <see cref="LoraTransformer"/>.</returns>
    /// <exception cref="ArgumentException">An option is invalid (the message names it).</exception>
    public static LoraFineTuningEstimator LoraFineTune(this TransformsCatalog catalog, LoraFineTuningOptions options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return new LoraFineTuningEstimator(MlNetHost.GetEnvironment(catalog), options);
    }

    /// <summary>Fine-tunes the embedded all-MiniLM-L6-v2 encoder with LoRA using the default options.</summary>
    /// <param name="catalog">The transforms catalog (<c>mlContext.Transforms</c>).</param>
    /// <param name="labelColumnName">Label: key type (multiclass), Boolean (binary) or Single (regression).</param>
    /// <param name="textColumnName">Text column.</param>
    /// <param name="textPairColumnName">Optional second text column (sentence pairs).</param>
    /// <returns>An estimator whose <c>Fit</c> returns a <see cref="LoraTransformer"/>.</returns>
    public static LoraFineTuningEstimator LoraFineTune(this TransformsCatalog catalog, string labelColumnName = DefaultColumnNames.Label, string textColumnName = "Text", string? textPairColumnName = null)
        => LoraFineTune(catalog, new LoraFineTuningOptions
        {
            LabelColumnName = labelColumnName,
            TextColumnName = textColumnName,
            TextPairColumnName = textPairColumnName,
        });

    /// <summary>
    /// Fine-tunes a pretrained image model (ML.NET's ResNet-18 by default) with LoRA on its convolutions and a linear head;
    /// see <see cref="LoraImageFineTuningOptions"/> for the settings and their defaults.
    /// </summary>
    /// <param name="catalog">The transforms catalog (<c>mlContext.Transforms</c>).</param>
    /// <param name="options">Columns, base model, image size, adapter shape and training schedule.</param>
    /// <returns>An estimator whose <c>Fit</c> returns a <see cref="LoraImageTransformer"/>.</returns>
    /// <exception cref="ArgumentException">An option is invalid (the message names it).</exception>
    public static LoraImageFineTuningEstimator LoraFineTuneImage(this TransformsCatalog catalog, LoraImageFineTuningOptions options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return new LoraImageFineTuningEstimator(MlNetHost.GetEnvironment(catalog), options);
    }

    /// <summary>Fine-tunes ML.NET's ResNet-18 with LoRA on an image column, using the default options.</summary>
    /// <param name="catalog">The transforms catalog (<c>mlContext.Transforms</c>).</param>
    /// <param name="labelColumnName">Label: key type (image classification), Boolean or Single.</param>
    /// <param name="imageColumnName">Image column: MLImage (LoadImages) or the bytes of an encoded image (LoadRawImageBytes).</param>
    /// <returns>An estimator whose <c>Fit</c> returns a <see cref="LoraImageTransformer"/>.</returns>
    public static LoraImageFineTuningEstimator LoraFineTuneImage(this TransformsCatalog catalog, string labelColumnName = DefaultColumnNames.Label, string imageColumnName = "Image")
        => LoraFineTuneImage(catalog, new LoraImageFineTuningOptions
        {
            LabelColumnName = labelColumnName,
            ImageColumnName = imageColumnName,
        });
}
