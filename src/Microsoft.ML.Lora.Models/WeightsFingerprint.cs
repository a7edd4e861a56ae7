using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// SHA-256 fingerprint of a set of named weights, independent of the file format they came from. For each tensor in
/// ordinal order of its key: the key in UTF-8, one 0 byte, the rank as int32 little-endian, each dimension as int64
/// little-endian, then the elements converted to float32, row-major, little-endian. Result: 64 lowercase hex digits.
/// </summary>
internal static class WeightsFingerprint
{
    public static string Compute(IEnumerable<KeyValuePair<string, Tensor>> weights)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> scratch = stackalloc byte[8];
        foreach (var (key, tensor) in weights.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            sha.AppendData(Encoding.UTF8.GetBytes(key));
            sha.AppendData([0]);
            BinaryPrimitives.WriteInt32LittleEndian(scratch, (int)tensor.dim());
            sha.AppendData(scratch[..4]);
            foreach (long dim in tensor.shape)
            {
                BinaryPrimitives.WriteInt64LittleEndian(scratch, dim);
                sha.AppendData(scratch);
            }

            using var cpu = tensor.detach().to_type(ScalarType.Float32).cpu().contiguous();
            float[] values = cpu.data<float>().ToArray();
            if (!BitConverter.IsLittleEndian)
            {
                var ints = MemoryMarshal.Cast<float, int>(values.AsSpan());
                BinaryPrimitives.ReverseEndianness(ints, ints);
            }

            sha.AppendData(MemoryMarshal.AsBytes(values.AsSpan()));
        }

        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}
