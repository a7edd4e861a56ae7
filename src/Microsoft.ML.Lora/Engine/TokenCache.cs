using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Engine;

/// <summary>A training row with its tokens (the text itself is dropped once tokenized).</summary>
internal readonly record struct TokenizedRow(TrainingRow Row, EncodedRow Tokens);

/// <summary>
/// Tokenizes training rows once, not once per epoch: the first pass streams the rows from the cursor and tokenizes them,
/// and while the token ids fit in the memory bound it keeps them (without the texts), so later passes replay them in the
/// same order with no cursor and no tokenizer. When they do not fit, every pass streams and tokenizes again, as before.
/// </summary>
/// <remarks>
/// Memory per cached row: 4 bytes per token (at most MaxSequenceLength tokens) plus <see cref="RowOverheadBytes"/>. With
/// the default bound of 256 MiB and MaxSequenceLength 128 that is at least 436,000 rows (each at the full length).
/// </remarks>
internal sealed class TokenCache
{
    /// <summary>Bytes counted per cached row besides its ids: the array header, the row object and the list slot.</summary>
    public const int RowOverheadBytes = 96;

    private readonly Func<IEnumerable<TrainingRow>> source;
    private readonly Func<TrainingRow, EncodedRow> encode;
    private readonly long budgetBytes;
    private List<TokenizedRow>? cached;

    /// <param name="source">The rows in data order (one cursor pass per call).</param>
    /// <param name="encode">Tokenizes a row (with the model's truncation).</param>
    /// <param name="budgetBytes">Most bytes the cache may hold; 0 or less never caches.</param>
    public TokenCache(Func<IEnumerable<TrainingRow>> source, Func<TrainingRow, EncodedRow> encode, long budgetBytes)
    {
        this.source = source;
        this.encode = encode;
        this.budgetBytes = budgetBytes;
    }

    /// <summary>Whether the rows are held (after a complete first pass that fitted the bound).</summary>
    public bool IsCached => cached is not null;

    /// <summary>Bytes the cache holds (0 when not cached).</summary>
    public long Bytes { get; private set; }

    /// <summary>What truncation cut in the first complete pass (null before it).</summary>
    public TruncationCounts? Counts { get; private set; }

    /// <summary>Whether the first complete pass found the rows larger than the bound (then every pass tokenizes).</summary>
    public bool Overflowed { get; private set; }

    /// <summary>Cost of a row in the cache, as the bound counts it.</summary>
    public static long RowBytes(EncodedRow row) => (4L * row.Ids.Length) + RowOverheadBytes;

    /// <summary>The rows with their tokens, in data order: replayed from memory when cached, else streamed and tokenized.</summary>
    public IEnumerable<TokenizedRow> Rows()
    {
        if (cached is not null)
        {
            foreach (var row in cached)
            {
                yield return row;
            }

            yield break;
        }

        bool first = Counts is null;
        var keep = first && budgetBytes > 0 ? new List<TokenizedRow>() : null;
        long bytes = 0;
        var counts = new TruncationCounts();
        foreach (var row in source())
        {
            var tokenized = new TokenizedRow(row with { Text = string.Empty, Pair = null }, encode(row));
            counts.Add(tokenized.Tokens);
            if (keep is not null)
            {
                bytes += RowBytes(tokenized.Tokens);
                if (bytes <= budgetBytes)
                {
                    keep.Add(tokenized);
                }
                else
                {
                    keep = null;
                    Overflowed = true;
                }
            }

            yield return tokenized;
        }

        // Only a complete pass counts (an interrupted one leaves the cache empty and the next pass streams again).
        if (first)
        {
            Counts = counts;
            if (keep is not null)
            {
                cached = keep;
                Bytes = bytes;
            }
        }
    }
}
