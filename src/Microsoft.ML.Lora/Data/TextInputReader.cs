using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Data;

/// <summary>
/// The text family's input for <see cref="IBatchScorer{TInput}"/>: reads a row's text (and pair) column and tokenizes it
/// whole (<see cref="TextTokens"/>), once; the model then truncates, windows and pads those tokens. Shared by
/// <c>LoraTransformer</c> (TorchSharp) and the ONNX scoring package's transformer, which compiles this file too.
/// </summary>
internal static class TextInputReader
{
    /// <summary>The columns a text model reads: the text column, and the pair column when it has one.</summary>
    public static IReadOnlyList<string> InputColumnNames(ColumnNames columns) =>
        columns.Pair is null ? [columns.Text] : [columns.Text, columns.Pair];

    /// <summary>
    /// Creates the reader of <paramref name="row"/>'s current text (and pair). It tokenizes a row's values once: read again
    /// with the same values (a row mapper reads the row for each output column), it returns the same tokens.
    /// </summary>
    /// <param name="row">The row or cursor; the columns must be active in it.</param>
    /// <param name="columns">The model's columns.</param>
    /// <param name="tokenizer">The model's tokenizer.</param>
    public static Func<TextTokens> Create(DataViewRow row, ColumnNames columns, BertTextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(row);
        var textGetter = row.GetGetter<ReadOnlyMemory<char>>(row.Schema[columns.Text]);
        var pairGetter = columns.Pair is null ? null : row.GetGetter<ReadOnlyMemory<char>>(row.Schema[columns.Pair]);
        ReadOnlyMemory<char> text = default, pair = default;
        string? lastText = null, lastPair = null;
        TextTokens? last = null;
        return () =>
        {
            textGetter(ref text);
            pairGetter?.Invoke(ref pair);
            if (last is not null && text.Span.SequenceEqual(lastText) && (pairGetter is null || pair.Span.SequenceEqual(lastPair)))
            {
                return last;
            }

            lastText = text.ToString();
            lastPair = pairGetter is null ? null : pair.ToString();
            last = tokenizer.TokenizeRow(lastText, lastPair);
            return last;
        };
    }
}
