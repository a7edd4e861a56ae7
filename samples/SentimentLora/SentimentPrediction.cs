using Microsoft.ML;
using Microsoft.ML.Data;

namespace SentimentLora;

/// <summary>The pipeline's prediction: class probabilities (in key order) and the predicted label.</summary>
public sealed class SentimentPrediction
{
    public float[] Score { get; set; } = [];

    public string PredictedLabel { get; set; } = string.Empty;

    /// <summary>The label value of each Score slot (from the Score column's SlotNames).</summary>
    public static string[] SlotNames(MLContext ml, ITransformer model)
    {
        var schema = model.GetOutputSchema(ml.Data.LoadFromEnumerable(Array.Empty<SentimentRow>()).Schema);
        VBuffer<ReadOnlyMemory<char>> names = default;
        schema["Score"].GetSlotNames(ref names);
        return names.DenseValues().Select(n => n.ToString()).ToArray();
    }
}
