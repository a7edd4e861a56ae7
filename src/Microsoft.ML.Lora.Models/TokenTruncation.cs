namespace Microsoft.ML.Lora.Models;

/// <summary>
/// The token arithmetic of truncation and sliding windows (no tokenizer, no TorchSharp): which word pieces of a text a
/// budget keeps, and where the windows over a long text start.
/// </summary>
internal static class TokenTruncation
{
    /// <summary>Head share of Sun et al. (2019): 128 of 510 word pieces.</summary>
    private const int PaperHead = 128;

    /// <summary>Budget of the paper's 512-token BERT (without [CLS] and [SEP]).</summary>
    private const int PaperBudget = 510;

    /// <summary>Head tokens that <see cref="TruncationStrategy.HeadTail"/> keeps of a budget: round(budget × 128 / 510).</summary>
    public static int HeadTailHead(int budget) =>
        (int)Math.Round(budget * (double)PaperHead / PaperBudget, MidpointRounding.AwayFromZero);

    /// <summary>The ids a budget of <paramref name="count"/> keeps by <paramref name="strategy"/>; all when they fit.</summary>
    public static List<int> Keep(IReadOnlyList<int> ids, int count, TruncationStrategy strategy)
    {
        if (ids.Count <= count)
        {
            return [.. ids];
        }

        switch (strategy)
        {
            case TruncationStrategy.Head:
                return [.. ids.Take(count)];
            case TruncationStrategy.HeadTail:
            {
                int head = HeadTailHead(count);
                var kept = new List<int>(count);
                kept.AddRange(ids.Take(head));
                kept.AddRange(ids.Skip(ids.Count - (count - head)));
                return kept;
            }

            default:
                throw new ArgumentOutOfRangeException(nameof(strategy), strategy, "Unknown truncation strategy; expected Head or HeadTail.");
        }
    }

    /// <summary>
    /// Start offsets of the windows of <paramref name="window"/> word pieces over a text of <paramref name="length"/>:
    /// 0, stride, 2 × stride, … while a window would end before the text does, then one last window that ends with the
    /// text (start length − window, unless the previous window already ends there). Every window is full; a text that
    /// fits has the one window 0.
    /// </summary>
    public static List<int> WindowStarts(int length, int window, int stride)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(window, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(stride, 1);
        var starts = new List<int> { 0 };
        if (length <= window)
        {
            return starts;
        }

        int start = stride;
        while (start + window < length)
        {
            starts.Add(start);
            start += stride;
        }

        int last = length - window;
        if (starts[^1] != last)
        {
            starts.Add(last);
        }

        return starts;
    }
}
