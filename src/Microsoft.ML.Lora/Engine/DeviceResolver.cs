using System.Globalization;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Runtime;
using TorchSharp;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// Picks the torch device from <c>mlContext.GpuDeviceId</c> and <c>mlContext.FallbackToCpu</c> with
/// Microsoft.ML.TorchSharp's semantics (no GPU id: CPU; a GPU id and CUDA available: that GPU; a GPU id, no usable
/// CUDA device and FallbackToCpu false: the same error text), except that the GPU index is honoured.
/// </summary>
internal static class DeviceResolver
{
    /// <summary>Microsoft.ML.TorchSharp's message for a requested GPU that is not there while fallback is off.</summary>
    public const string NoGpuMessage = "Fallback to CPU is false but no GPU detected";

    public static torch.Device Resolve(IHostEnvironment env)
    {
        int? gpu = MlNetHost.GetGpuDeviceId(env);
        bool fallback = MlNetHost.GetFallbackToCpu(env);
        return Resolve(gpu, fallback, torch.cuda.is_available() ? torch.cuda.device_count() : 0);
    }

    internal static torch.Device Resolve(int? gpuDeviceId, bool fallbackToCpu, int cudaDeviceCount)
    {
        if (gpuDeviceId is null)
        {
            return torch.CPU;
        }

        if (gpuDeviceId.Value >= 0 && gpuDeviceId.Value < cudaDeviceCount)
        {
            return new torch.Device(DeviceType.CUDA, gpuDeviceId.Value);
        }

        if (!fallbackToCpu)
        {
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"{NoGpuMessage} (mlContext.GpuDeviceId = {gpuDeviceId.Value}, CUDA devices available: {cudaDeviceCount}; a CUDA build of the torch runtime is needed, e.g. -p:TorchRuntime=cuda-linux)."));
        }

        return torch.CPU;
    }
}
