namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>The shape of an adapted image model: what a model file must record to rebuild it on top of the base.</summary>
/// <param name="Rank">LoRA rank r.</param>
/// <param name="Alpha">LoRA alpha.</param>
/// <param name="Dropout">Dropout on the LoRA branch's input.</param>
/// <param name="TargetModules">Regular expression that must match a whole module path (PEFT's string form).</param>
/// <param name="UseRsLora">Scale by alpha / √r instead of alpha / r.</param>
/// <param name="ImageSize">Side of the square images the model takes.</param>
/// <param name="LabelMean">Regression label mean (0 for classification).</param>
/// <param name="LabelScale">Regression label spread (1 for classification).</param>
internal sealed record ImageAdapterSettings(int Rank, double Alpha, double Dropout, string TargetModules, bool UseRsLora, int ImageSize, float LabelMean, float LabelScale);
