using System.Globalization;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// What truncation cut: rows seen and cut, word pieces before and after truncation. Thread-safe to add to (a model's
/// counter is shared by the cursors and prediction engines scoring with it).
/// </summary>
internal sealed class TruncationCounts
{
    private long rows, truncatedRows, sourceTokens, keptTokens;

    /// <summary>Rows counted.</summary>
    public long Rows => Interlocked.Read(ref rows);

    /// <summary>Rows that lost word pieces to truncation.</summary>
    public long TruncatedRows => Interlocked.Read(ref truncatedRows);

    /// <summary>Word pieces of the rows' texts (and pairs) before truncation.</summary>
    public long SourceTokens => Interlocked.Read(ref sourceTokens);

    /// <summary>Word pieces kept.</summary>
    public long KeptTokens => Interlocked.Read(ref keptTokens);

    /// <summary>Counts one row.</summary>
    public void Add(EncodedRow row)
    {
        Interlocked.Increment(ref rows);
        Interlocked.Add(ref truncatedRows, row.Truncated ? 1 : 0);
        Interlocked.Add(ref sourceTokens, row.SourceTokens);
        Interlocked.Add(ref keptTokens, row.KeptTokens);
    }

    /// <summary>Counts texts: how many, how many were longer than the budget, word pieces before and after truncation.</summary>
    public void Add(long rowCount, long longRows, long source, long kept)
    {
        Interlocked.Add(ref rows, rowCount);
        Interlocked.Add(ref truncatedRows, longRows);
        Interlocked.Add(ref sourceTokens, source);
        Interlocked.Add(ref keptTokens, kept);
    }

    /// <summary>The counts so far, and zero for the next ones.</summary>
    public TruncationCounts TakeAndReset()
    {
        var taken = new TruncationCounts();
        taken.rows = Interlocked.Exchange(ref rows, 0);
        taken.truncatedRows = Interlocked.Exchange(ref truncatedRows, 0);
        taken.sourceTokens = Interlocked.Exchange(ref sourceTokens, 0);
        taken.keptTokens = Interlocked.Exchange(ref keptTokens, 0);
        return taken;
    }

    /// <summary>The log line: how many rows were longer than the budget and what share of the word pieces was cut.</summary>
    /// <param name="where">"Fit" or "Transform".</param>
    /// <param name="maxLength">MaxSequenceLength.</param>
    /// <param name="truncation">The strategy that chose the kept tokens.</param>
    /// <param name="windowStride">The inference window stride (0: none).</param>
    public string Describe(string where, int maxLength, TruncationStrategy truncation, int windowStride)
    {
        long cutTokens = SourceTokens - KeptTokens;
        string how = windowStride > 0
            ? string.Create(CultureInfo.InvariantCulture, $"sliding windows of {maxLength} tokens every {windowStride} word pieces, so nothing was cut")
            : string.Create(CultureInfo.InvariantCulture, $"{truncation} truncation cut {cutTokens} of {SourceTokens} word pieces ({Share(cutTokens, SourceTokens)})");
        return string.Create(CultureInfo.InvariantCulture,
            $"{where}: {TruncatedRows} of {Rows} rows ({Share(TruncatedRows, Rows)}) were longer than MaxSequenceLength {maxLength} tokens; {how}.");
    }

    private static string Share(long part, long whole) =>
        whole == 0 ? "0 %" : string.Create(CultureInfo.InvariantCulture, $"{100.0 * part / whole:0.##} %");
}
