using System.Globalization;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Engine;

/// <summary>A text training row with its tokens (the text itself is dropped once tokenized): the text family's training row.</summary>
internal readonly record struct TokenizedRow(TrainingRow Row, EncodedRow Tokens) : ILabeledRow
{
    /// <inheritdoc/>
    public int Class => Row.Class;

    /// <inheritdoc/>
    public float Value => Row.Value;
}

/// <summary>
/// Tokenizes training rows once, not once per epoch: the first pass streams the rows from the cursor and tokenizes them,
/// and while the token ids fit in the memory bound it keeps them (without the texts), so later passes replay them in the
/// same order with no cursor and no tokenizer. When they do not fit, every pass streams and tokenizes again, as before.
/// </summary>
/// <remarks>
/// Memory per cached row: 4 bytes per token (at most MaxSequenceLength tokens) plus <see cref="RowOverheadBytes"/>. With
/// the default bound of 256 MiB and MaxSequenceLength 128 that is at least 436,000 rows (each at the full length).
/// </remarks>
internal sealed class TokenCache : ITrainingRows<TokenizedRow>
{
    /// <summary>Bytes counted per cached row besides its ids: the array header, the row object and the list slot.</summary>
    public const int RowOverheadBytes = 96;

    private readonly Func<IEnumerable<TrainingRow>> source;
    private readonly Func<TrainingRow, EncodedRow> encode;
    private readonly Func<long> budgetBytes;
    private readonly long optionBytes;
    private readonly int maxSequenceLength;
    private readonly TruncationStrategy truncation;
    private List<TokenizedRow>? cached;

    /// <param name="source">The rows in data order (one cursor pass per call).</param>
    /// <param name="encode">Tokenizes a row (with the model's truncation).</param>
    /// <param name="budgetBytes">Most bytes the cache may hold, read when the first pass starts; 0 or less never caches.</param>
    /// <param name="optionBytes">The <see cref="LoraFineTuningOptions.TokenCacheBytes"/> the budget comes from (for the log).</param>
    /// <param name="maxSequenceLength">The model's maximum sequence length (for the log).</param>
    /// <param name="truncation">The model's truncation strategy (for the log).</param>
    public TokenCache(Func<IEnumerable<TrainingRow>> source, Func<TrainingRow, EncodedRow> encode, Func<long> budgetBytes, long optionBytes, int maxSequenceLength, TruncationStrategy truncation)
    {
        this.source = source;
        this.encode = encode;
        this.budgetBytes = budgetBytes;
        this.optionBytes = optionBytes;
        this.maxSequenceLength = maxSequenceLength;
        this.truncation = truncation;
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
        long budget = first ? budgetBytes() : 0;
        var keep = first && budget > 0 ? new List<TokenizedRow>() : null;
        long bytes = 0;
        var counts = new TruncationCounts();
        foreach (var row in source())
        {
            var tokenized = new TokenizedRow(row with { Text = string.Empty, Pair = null }, encode(row));
            counts.Add(tokenized.Tokens);
            if (keep is not null)
            {
                bytes += RowBytes(tokenized.Tokens);
                if (bytes <= budget)
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

    /// <summary>After the first epoch: what truncation cut, and whether the tokens are cached for the next epochs.</summary>
    public IEnumerable<string> FirstPassSummary()
    {
        if (Counts is { } counts)
        {
            yield return counts.Describe("Fit", maxSequenceLength, truncation, windowStride: 0);
        }

        string bound = $"{Size(optionBytes)} ({nameof(LoraFineTuningOptions.TokenCacheBytes)})";
        yield return IsCached
            ? $"Token cache: the rows' token ids ({Size(Bytes)} of {bound}) are kept; later epochs do not tokenize again."
            : Overflowed
                ? $"Token cache off: the rows' token ids need more than {bound}; every epoch streams and tokenizes the rows again."
                : $"Token cache off ({nameof(LoraFineTuningOptions.TokenCacheBytes)} is 0): every epoch streams and tokenizes the rows again.";
    }

    private static string Size(long bytes) => bytes >= 1024 * 1024
        ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024.0 * 1024.0):0.#} MiB")
        : string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:0.#} KiB");
}
