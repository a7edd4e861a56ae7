using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public sealed class PoolingTests
{
    [TestMethod]
    public void Pool_Mean_AveragesOnlyMaskedTokens()
    {
        using var scope = NewDisposeScope();
        var hidden = tensor(new float[] { 1, 2, 3, 4, 100, 100, 5, 6, 7, 8, 9, 10 }, [2, 3, 2]);
        var mask = tensor(new long[] { 1, 1, 0, 1, 1, 1 }, [2, 3]);
        var pooled = Pooling.Pool(hidden, mask, PoolingMode.Mean, normalize: false);
        CollectionAssert.AreEqual(new float[] { 2, 3, 7, 8 }, TestData.ToArray(pooled));
    }

    [TestMethod]
    public void Pool_Cls_TakesFirstToken_NormalizeGivesUnitNorm()
    {
        using var scope = NewDisposeScope();
        var hidden = tensor(new float[] { 3, 4, 9, 9, 0, 5, 9, 9 }, [2, 2, 2]);
        var mask = ones([2, 2], dtype: ScalarType.Int64);
        CollectionAssert.AreEqual(new float[] { 3, 4, 0, 5 }, TestData.ToArray(Pooling.Pool(hidden, mask, PoolingMode.Cls, normalize: false)));
        CollectionAssert.AreEqual(new float[] { 0.6f, 0.8f, 0, 1 }, TestData.ToArray(Pooling.Pool(hidden, mask, PoolingMode.Cls, normalize: true)));
    }

    [TestMethod]
    public void Pool_Mean_AllPaddingRow_GivesZerosNotNaN()
    {
        using var scope = NewDisposeScope();
        var hidden = ones([1, 3, 2]);
        var mask = zeros([1, 3], dtype: ScalarType.Int64);
        CollectionAssert.AreEqual(new float[] { 0, 0 }, TestData.ToArray(Pooling.Pool(hidden, mask, PoolingMode.Mean, normalize: true)));
    }

    [TestMethod]
    public void Pool_MismatchedMask_ThrowsNamingAttentionMask()
    {
        using var scope = NewDisposeScope();
        var e = Assert.ThrowsExactly<ArgumentException>(() => Pooling.Pool(ones([2, 3, 4]), ones([2, 4]), PoolingMode.Mean, false));
        Assert.AreEqual("attentionMask", e.ParamName);
        Assert.AreEqual("hidden", Assert.ThrowsExactly<ArgumentException>(() => Pooling.Pool(ones([2, 3]), ones([2, 3]), PoolingMode.Mean, false)).ParamName);
    }
}
