namespace Microsoft.ML.Lora.Data;

/// <summary>The columns a trained model reads and writes.</summary>
internal sealed record ColumnNames(string Text, string? Pair, string Score, string PredictedLabel, string Probability);
