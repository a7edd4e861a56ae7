using Microsoft.ML.Lora.Onnx;

namespace Microsoft.ML;

/// <summary>Scoring of exported LoRA text models without TorchSharp: <c>mlContext.Transforms.ScoreLoraOnnx(path)</c>.</summary>
public static class LoraOnnxCatalog
{
    /// <summary>
    /// Loads a model written by <c>LoraTransformer.ExportOnnx</c> as a transformer with the same output columns as the
    /// <c>LoraTransformer</c> it came from; see <see cref="LoraOnnxTransformer"/>. There is nothing to fit: the returned
    /// transformer is used directly (<c>Transform</c>, <c>CreatePredictionEngine</c>, <c>Model.Save</c>).
    /// </summary>
    /// <param name="catalog">The transforms catalog (<c>mlContext.Transforms</c>).</param>
    /// <param name="modelPath">The exported .onnx file.</param>
    /// <param name="inferenceBatchSize">Rows per ONNX Runtime run in <c>Transform</c>; null (default) keeps the exported model's.</param>
    /// <returns>The transformer.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a model written by <c>ExportOnnx</c>.</exception>
    public static LoraOnnxTransformer ScoreLoraOnnx(this TransformsCatalog catalog, string modelPath, int? inferenceBatchSize = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return LoraOnnxTransformer.Load(modelPath, inferenceBatchSize);
    }
}
