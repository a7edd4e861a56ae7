namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// Streams items in a random order using a bounded buffer: the first <c>capacity</c> items fill the buffer, then each
/// new item replaces a uniformly chosen buffered item, which is emitted; at the end the rest is emitted in random order.
/// A source no larger than the buffer is fully shuffled. Deterministic for a given <see cref="Random"/> seed.
/// </summary>
internal static class ShuffleBuffer
{
    public static IEnumerable<T> Shuffle<T>(IEnumerable<T> source, int capacity, Random random)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        var buffer = new List<T>(Math.Min(capacity, 1 << 16));
        foreach (var item in source)
        {
            if (buffer.Count < capacity)
            {
                buffer.Add(item);
                continue;
            }

            int j = random.Next(buffer.Count);
            yield return buffer[j];
            buffer[j] = item;
        }

        for (int n = buffer.Count; n > 0; n--)
        {
            int j = random.Next(n);
            yield return buffer[j];
            buffer[j] = buffer[n - 1];
        }
    }
}
