namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// Length grouping (Hugging Face's <c>group_by_length</c>): a batch is padded to its longest row, so batches of rows of
/// similar length cost less. Rows are read in windows, each window is sorted by length (stable), cut into batches, and
/// the batch order is shuffled with a seeded generator (training). A text row's length is its token count, in training
/// (the truncated row) and in <c>Transform</c> (the text's and pair's word pieces, tokenized once and then scored;
/// <c>Data/BatchScoringView</c> sorts each window and restores the row order).
/// </summary>
/// <remarks>This file has no TorchSharp dependency (the ONNX scoring package compiles it too).</remarks>
internal static class LengthGrouping
{
    /// <summary>Training window in batches (Hugging Face's megabatch multiplier).</summary>
    public const int TrainingWindowBatches = 50;

    /// <summary>Inference window in batches: rows whose inputs (a text row's tokens) are held at once by a <c>Transform</c> cursor.</summary>
    public const int InferenceWindowBatches = 8;

    /// <summary>
    /// Batches of <paramref name="batchSize"/> rows: each window of <paramref name="window"/> rows is sorted by length, cut
    /// into batches, and its batches are yielded in a shuffled order. With a window that is a multiple of the batch size,
    /// the batch count equals that of plain chunking. Deterministic for a given <see cref="Random"/> seed.
    /// </summary>
    public static IEnumerable<T[]> Batches<T>(IEnumerable<T> rows, int batchSize, int window, Func<T, int> length, Random random)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(window, batchSize);
        foreach (var chunk in rows.Chunk(window))
        {
            var batches = SortedOrder(chunk.Select(length).ToArray()).Select(i => chunk[i]).Chunk(batchSize).ToArray();
            for (int n = batches.Length - 1; n > 0; n--)
            {
                int j = random.Next(n + 1);
                (batches[n], batches[j]) = (batches[j], batches[n]);
            }

            foreach (var batch in batches)
            {
                yield return batch;
            }
        }
    }

    /// <summary>The indices of <paramref name="lengths"/> in ascending length; equal lengths keep their order.</summary>
    public static int[] SortedOrder(IReadOnlyList<int> lengths)
    {
        var order = new int[lengths.Count];
        for (int i = 0; i < order.Length; i++)
        {
            order[i] = i;
        }

        // Array.Sort is not stable; the index as second key makes it so.
        Array.Sort(order, (a, b) => lengths[a] != lengths[b] ? lengths[a].CompareTo(lengths[b]) : a.CompareTo(b));
        return order;
    }
}
