using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>Moves batch tensors built on the host to the training device.</summary>
internal static class HostTransfer
{
    /// <summary>
    /// <paramref name="host"/> (a CPU tensor) on <paramref name="device"/>. For a CUDA device it is copied into pinned
    /// (page-locked) host memory and sent with <c>non_blocking</c>: the copy is queued behind the work already on the
    /// device instead of waiting for it (a copy from ordinary memory makes the host wait). libtorch's pinned allocator
    /// keeps the pinned block until the copy has run, so the host tensor may be disposed at once. On the CPU (pinning needs
    /// CUDA) the tensor itself is returned.
    /// </summary>
    public static Tensor ToDevice(Tensor host, Device device)
    {
        if (device.type != DeviceType.CUDA)
        {
            return host;
        }

        using var pinned = host.pin_memory();
        return pinned.to(device, non_blocking: true);
    }
}
