using Microsoft.ML.Data;

namespace SentimentLora;

/// <summary>A row of data/sentiment.tsv: the sentence and its label ("1" positive, "0" negative).</summary>
public sealed class SentimentRow
{
    [LoadColumn(0)]
    public string Text { get; set; } = string.Empty;

    [LoadColumn(1)]
    public string Label { get; set; } = string.Empty;
}
