namespace Microsoft.ML.Lora.Models;

/// <summary>
/// The word pieces of one row's text (and pair), before special tokens and truncation: what a text row is tokenized to
/// once (<see cref="BertTextTokenizer.TokenizeRow"/>) and then cut by a <see cref="TruncationStrategy"/>
/// (<see cref="BertTextTokenizer.EncodeRow(TextTokens, int, TruncationStrategy)"/>) or split into sliding windows
/// (<see cref="BertTextTokenizer.WindowRows(IReadOnlyList{TextTokens}, int, int)"/>).
/// </summary>
/// <remarks>This file has no TorchSharp dependency (the ONNX scoring package compiles it too).</remarks>
internal sealed class TextTokens
{
    public TextTokens(IReadOnlyList<int> text, IReadOnlyList<int>? pair)
    {
        Text = text;
        Pair = pair;
    }

    /// <summary>Word-piece ids of the text.</summary>
    public IReadOnlyList<int> Text { get; }

    /// <summary>Word-piece ids of the pair, or null for a single text.</summary>
    public IReadOnlyList<int>? Pair { get; }

    /// <summary>Word pieces of the text and pair together (the length rows are grouped by).</summary>
    public int Count => Text.Count + (Pair?.Count ?? 0);

    /// <summary>Whether <paramref name="other"/> holds the same ids (a single text never equals a pair).</summary>
    public bool SameIds(TextTokens other)
    {
        ArgumentNullException.ThrowIfNull(other);
        return ReferenceEquals(this, other) ||
            (Text.SequenceEqual(other.Text) && (Pair is null ? other.Pair is null : other.Pair is not null && Pair.SequenceEqual(other.Pair)));
    }
}
