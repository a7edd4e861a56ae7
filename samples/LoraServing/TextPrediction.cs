namespace LoraServing;

/// <summary>A multiclass prediction: class probabilities and the predicted label's value (after MapKeyToValue).</summary>
public sealed class TextPrediction
{
    /// <summary>Probability of each class, in key order.</summary>
    public float[] Score { get; set; } = [];

    /// <summary>The predicted class.</summary>
    public string PredictedLabel { get; set; } = string.Empty;
}
