using Microsoft.ML.Lora.Engine;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class TrainingPartsTests
{
    [TestMethod]
    public void ShuffleBuffer_SmallerThanBuffer_IsSeededPermutation()
    {
        var items = Enumerable.Range(0, 100).ToList();
        var first = ShuffleBuffer.Shuffle(items, 1000, new Random(3)).ToList();
        var again = ShuffleBuffer.Shuffle(items, 1000, new Random(3)).ToList();
        var other = ShuffleBuffer.Shuffle(items, 1000, new Random(4)).ToList();
        CollectionAssert.AreEquivalent(items, first);
        CollectionAssert.AreEqual(first, again);
        CollectionAssert.AreNotEqual(first, other);
        CollectionAssert.AreNotEqual(items, first);
    }

    [TestMethod]
    public void ShuffleBuffer_LargerThanBuffer_EmitsEveryItemOnceAndMixes()
    {
        var items = Enumerable.Range(0, 1000).ToList();
        var shuffled = ShuffleBuffer.Shuffle(items, 16, new Random(1)).ToList();
        CollectionAssert.AreEquivalent(items, shuffled);

        // A buffer of 16 can hold an item back for long but can emit it at most 16 places earlier than in the source;
        // it still mixes: most positions change.
        Assert.IsGreaterThan(900, shuffled.Where((v, i) => v != i).Count());
        Assert.IsTrue(shuffled.Select((v, i) => v - i).All(d => d <= 16));
    }

    [TestMethod]
    [DataRow(1, 0.25)]
    [DataRow(4, 1.0)]
    [DataRow(5, 1.0)]
    [DataRow(10, 11.0 / 16)]
    [DataRow(20, 1.0 / 16)]
    public void LearningRateAt_WarmupThenLinearDecay(int step, double expectedFraction)
    {
        // 20 steps, 4 warm-up: 1/4, 2/4, 3/4, 1 then (20 - step + 1) / 16.
        Assert.AreEqual(expectedFraction * 1e-3, LoraTrainer.LearningRateAt(step, 20, 4, 1e-3), 1e-15);
    }
}
