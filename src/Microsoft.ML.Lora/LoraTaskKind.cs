namespace Microsoft.ML.Lora;

/// <summary>What a <c>LoraTransformer</c> predicts; follows the type of the label column it was trained on.</summary>
/// <remarks>The ONNX scoring package compiles this file too, as an internal type.</remarks>
#if MICROSOFT_ML_LORA_ONNX
internal
#else
public
#endif
enum LoraTaskKind
{
    /// <summary>Key-typed label: Score is a vector of class probabilities, PredictedLabel a key.</summary>
    MulticlassClassification,

    /// <summary>Boolean label: Score (logit), Probability and a Boolean PredictedLabel.</summary>
    BinaryClassification,

    /// <summary>Single-precision label: Score is the predicted value.</summary>
    Regression,
}
