using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

// The TorchSharp half of EncodedBatch (the other half is shared with the ONNX scoring package, which has no TorchSharp).
public sealed partial class EncodedBatch
{
    /// <summary>Creates int64 tensors [BatchSize, SequenceLength] of ids, mask and token types.</summary>
    /// <param name="device">Where to create them; the CPU when null.</param>
    /// <returns>The three tensors; the caller owns (disposes) them.</returns>
    /// <remarks>
    /// On a CUDA device the three arrays travel as one block [3, BatchSize, SequenceLength] from pinned (page-locked)
    /// host memory with a non-blocking copy: one transfer per batch, queued behind the work already on the GPU rather
    /// than waiting for it. The returned tensors are views of that device block. On the CPU nothing is pinned.
    /// </remarks>
    public (Tensor ids, Tensor mask, Tensor types) ToTensors(Device? device = null)
    {
        if (device is null || device.type != DeviceType.CUDA)
        {
            long[] shape = [BatchSize, SequenceLength];
            var ids = tensor(InputIds, shape, ScalarType.Int64, device);
            var mask = tensor(AttentionMask, shape, ScalarType.Int64, device);
            var types = tensor(TokenTypeIds, shape, ScalarType.Int64, device);
            return (ids, mask, types);
        }

        using var host = HostBlock(pinned: true);

        // libtorch's pinned allocator keeps the host block until the queued copy has run, so disposing it here is safe.
        using var block = host.to(device, non_blocking: true);
        return (block[0], block[1], block[2]);
    }

    /// <summary>The ids, mask and token types as one CPU block [3, BatchSize, SequenceLength], in pinned memory if asked (needs CUDA).</summary>
    internal Tensor HostBlock(bool pinned)
    {
        int n = InputIds.Length;
        var values = new long[3 * n];
        InputIds.CopyTo(values, 0);
        AttentionMask.CopyTo(values, n);
        TokenTypeIds.CopyTo(values, 2 * n);
        var host = tensor(values, [3, BatchSize, SequenceLength], ScalarType.Int64);
        if (!pinned)
        {
            return host;
        }

        using (host)
        {
            return host.pin_memory();
        }
    }
}
