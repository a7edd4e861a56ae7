using TorchSharp;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class TorchInitTests
{
    [TestMethod]
    public void TorchSharp_InitialisesInTestHost_MatmulIsCorrect()
    {
        using var a = torch.tensor(new float[] { 1, 2, 3, 4 }, 2, 2);
        using var b = a.matmul(a);
        CollectionAssert.AreEqual(new float[] { 7, 10, 15, 22 }, b.data<float>().ToArray());
    }
}
