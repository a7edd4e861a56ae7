namespace Microsoft.ML.Lora.Engine;

/// <summary>One text training example: text, optional pair, and the label as a class index (classification) or value (regression).</summary>
internal readonly record struct TrainingRow(string Text, string? Pair, int Class, float Value) : ILabeledRow;
