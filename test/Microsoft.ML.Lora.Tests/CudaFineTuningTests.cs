using Microsoft.ML.Lora.Models;
using TorchSharp;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// The ML.NET path on a GPU: training honours mlContext.GpuDeviceId, and a model file moves between devices.
/// Skipped (reported as skipped) without CUDA; <see cref="CudaConditionAttribute.CpuStandIn"/> dry-runs the code on CPU.
/// </summary>
[TestClass]
[CudaCondition]
public sealed class CudaFineTuningTests
{
    private static string root = string.Empty;
    private static PretrainedModel baseModel = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        baseModel = TinyBert.Create(Path.Combine(root, "base"), seed: 13);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        try
        {
            Directory.Delete(root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>An MLContext on the test GPU (or the CPU in a stand-in dry run).</summary>
    private static MLContext GpuContext(int seed) =>
        CudaConditionAttribute.CpuStandIn ? new MLContext(seed) : new MLContext(seed) { GpuDeviceId = 0, FallbackToCpu = false };

    private static IDataView Data(MLContext ml) =>
        ml.Data.LoadFromEnumerable(TinyBert.Sentences(64, 2, 21).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));

    private static float[] Scores(MLContext ml, ITransformer model, IDataView data) =>
        ml.Data.CreateEnumerable<BinaryPrediction>(model.Transform(data), reuseRowObject: false).Select(p => p.Score).ToArray();

    [TestMethod]
    public void Fit_WithGpuDeviceId_TrainsOnThatDevice()
    {
        var ml = GpuContext(2);
        var data = Data(ml);
        using var model = ml.Transforms.LoraFineTune(TinyBert.FastOptions(baseModel)).Fit(data);
        Assert.AreEqual(CudaConditionAttribute.Device.type, model.Model.Device.type, "the model lives on the requested device");
        Assert.IsTrue(model.Model.Model.parameters().All(p => p.device.type == CudaConditionAttribute.Device.type), "every parameter is on it");
        var metrics = ml.BinaryClassification.Evaluate(model.Transform(data));
        Assert.IsGreaterThanOrEqualTo(0.9, metrics.Accuracy, $"accuracy {metrics.Accuracy}");
    }

    [TestMethod]
    public void ModelFile_TrainedOnGpu_LoadsOnCpu_AndBack()
    {
        var gpu = GpuContext(3);
        var data = Data(gpu);
        using var trained = gpu.Transforms.LoraFineTune(TinyBert.FastOptions(baseModel)).Fit(data);
        float[] onGpu = Scores(gpu, trained, data);
        string path = Path.Combine(root, "gpu-trained.zip");
        gpu.Model.Save(trained, data.Schema, path);

        var cpu = new MLContext(seed: 3);
        var onCpuModel = cpu.Model.Load(path, out _);
        float[] onCpu = Scores(cpu, onCpuModel, data);
        var reloadedOnGpu = GpuContext(3).Model.Load(path, out _);
        float[] backOnGpu = Scores(gpu, reloadedOnGpu, data);
        (onCpuModel as IDisposable)?.Dispose();
        (reloadedOnGpu as IDisposable)?.Dispose();

        for (int i = 0; i < onGpu.Length; i++)
        {
            // Same weights, different kernels (cuBLAS vs CPU BLAS, fp32): logits agree to well under 1e-3.
            Assert.AreEqual(onGpu[i], onCpu[i], 1e-3, $"row {i}: GPU vs CPU");
            Assert.AreEqual(onGpu[i], backOnGpu[i], 1e-5, $"row {i}: GPU before and after Save/Load");
        }
    }

    [TestMethod]
    public void GpuDeviceIdBeyondTheDevices_WithoutFallback_FailsBeforeTraining()
    {
        int count = CudaConditionAttribute.CpuStandIn ? 0 : torch.cuda.device_count();
        var ml = new MLContext(seed: 4) { GpuDeviceId = count, FallbackToCpu = false };
        var error = Assert.Throws<InvalidOperationException>(() => ml.Transforms.LoraFineTune(TinyBert.FastOptions(baseModel)).Fit(Data(ml)));
        StringAssert.Contains(error.Message, $"GpuDeviceId = {count}");
    }
}
