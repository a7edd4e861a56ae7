namespace Microsoft.ML.Lora.Models.Tests;

[TestClass]
public static class TempCleanup
{
    [AssemblyCleanup]
    public static void DeleteTemporaryFolders()
    {
        if (Directory.Exists(TestData.TempRoot))
        {
            Directory.Delete(TestData.TempRoot, recursive: true);
        }
    }
}
