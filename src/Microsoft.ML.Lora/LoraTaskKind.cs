namespace Microsoft.ML.Lora;

/// <summary>What a <see cref="LoraTransformer"/> predicts; follows the type of the label column it was trained on.</summary>
public enum LoraTaskKind
{
    /// <summary>Key-typed label: Score is a vector of class probabilities, PredictedLabel a key.</summary>
    MulticlassClassification,

    /// <summary>Boolean label: Score (logit), Probability and a Boolean PredictedLabel.</summary>
    BinaryClassification,

    /// <summary>Single-precision label: Score is the predicted value.</summary>
    Regression,
}
