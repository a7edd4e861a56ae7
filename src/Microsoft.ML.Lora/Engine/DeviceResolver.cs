using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Runtime;
using TorchSharp;
using static TorchSharp.torch;

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

    /// <summary>
    /// The dtype of the frozen encoder for <paramref name="precision"/> on <paramref name="device"/>: Auto is bfloat16 on
    /// a CUDA device whose libtorch runs a bfloat16 matrix product there, and on a CPU with native bfloat16 instructions
    /// where it is measured faster (<see cref="CpuBFloat16"/>); float32 otherwise.
    /// </summary>
    public static ScalarType ResolveEncoderDtype(LoraPrecision precision, torch.Device device) =>
        ResolveEncoderDtype(precision, device, () => CpuBFloat16.IsFaster);

    /// <summary><see cref="ResolveEncoderDtype(LoraPrecision, torch.Device)"/> with the CPU rule passed in (tests).</summary>
    internal static ScalarType ResolveEncoderDtype(LoraPrecision precision, torch.Device device, Func<bool> cpuBFloat16IsFaster) => precision switch
    {
        LoraPrecision.Float32 => ScalarType.Float32,
        LoraPrecision.BFloat16 => ScalarType.BFloat16,
        _ when device.type == DeviceType.CUDA => RunsBFloat16(device) ? ScalarType.BFloat16 : ScalarType.Float32,
        _ => device.type == DeviceType.CPU && cpuBFloat16IsFaster() ? ScalarType.BFloat16 : ScalarType.Float32,
    };

    private static bool RunsBFloat16(torch.Device device)
    {
        try
        {
            using var scope = torch.NewDisposeScope();
            var x = torch.ones(8, 8, dtype: ScalarType.BFloat16, device: device);
            return x.matmul(x).isfinite().all().item<bool>();
        }
        catch (ExternalException)
        {
            return false;
        }
    }
}
