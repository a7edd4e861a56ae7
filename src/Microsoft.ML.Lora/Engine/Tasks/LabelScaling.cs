namespace Microsoft.ML.Lora.Engine.Tasks;

/// <summary>
/// How a regression label is standardised for training: the head predicts (label − Mean) / Scale, and scores are
/// output · Scale + Mean. The identity (0, 1) for classification.
/// </summary>
internal readonly record struct LabelScaling(float Mean, float Scale)
{
    /// <summary>No standardisation.</summary>
    public static LabelScaling Identity => new(0f, 1f);
}
