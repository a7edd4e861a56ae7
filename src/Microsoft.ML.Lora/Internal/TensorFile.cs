using System.Runtime.InteropServices;
using System.Text;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Internal;

/// <summary>
/// The adapter tensors inside the model zip: magic "LORATNS1", count, then per tensor its name, rank, dimensions and
/// float32 values (little-endian), in ordinal name order. Exact bits, so predictions after loading equal those before saving.
/// </summary>
internal static class TensorFile
{
    private static readonly byte[] Magic = Encoding.ASCII.GetBytes("LORATNS1");

    public static void Write(BinaryWriter writer, IReadOnlyDictionary<string, Tensor> tensors)
    {
        writer.Write(Magic);
        writer.Write(tensors.Count);
        foreach (var (name, tensor) in tensors.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            using var cpu = tensor.detach().to(ScalarType.Float32).cpu().contiguous();
            writer.Write(name);
            writer.Write((int)cpu.dim());
            foreach (long d in cpu.shape)
            {
                writer.Write(d);
            }

            var values = cpu.data<float>().ToArray();
            if (!BitConverter.IsLittleEndian)
            {
                throw new PlatformNotSupportedException("Model files are written on little-endian machines only.");
            }

            writer.Write(MemoryMarshal.AsBytes(values.AsSpan()));
        }
    }

    public static SortedDictionary<string, Tensor> Read(BinaryReader reader)
    {
        var magic = reader.ReadBytes(Magic.Length);
        if (!magic.AsSpan().SequenceEqual(Magic))
        {
            throw new InvalidDataException("The adapter tensors of this LoRA model file are corrupt (bad header).");
        }

        int count = reader.ReadInt32();
        if (count < 0 || count > 1_000_000)
        {
            throw new InvalidDataException($"The adapter tensors of this LoRA model file are corrupt (count {count}).");
        }

        var result = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            for (int i = 0; i < count; i++)
            {
                string name = reader.ReadString();
                int rank = reader.ReadInt32();
                if (rank < 0 || rank > 8)
                {
                    throw new InvalidDataException($"Tensor '{name}' in this LoRA model file has an invalid rank {rank}.");
                }

                var shape = new long[rank];
                long elements = 1;
                for (int d = 0; d < rank; d++)
                {
                    shape[d] = reader.ReadInt64();
                    if (shape[d] < 0 || shape[d] > int.MaxValue)
                    {
                        throw new InvalidDataException($"Tensor '{name}' in this LoRA model file has an invalid dimension {shape[d]}.");
                    }

                    elements *= shape[d];
                }

                if (elements > int.MaxValue / sizeof(float))
                {
                    throw new InvalidDataException($"Tensor '{name}' in this LoRA model file is too large ({elements} elements).");
                }

                var bytes = reader.ReadBytes((int)elements * sizeof(float));
                if (bytes.Length != elements * sizeof(float))
                {
                    throw new InvalidDataException($"The LoRA model file ends inside tensor '{name}'.");
                }

                var values = MemoryMarshal.Cast<byte, float>(bytes).ToArray();
                result[name] = tensor(values, shape, ScalarType.Float32);
            }
        }
        catch
        {
            foreach (var t in result.Values)
            {
                t.Dispose();
            }

            throw;
        }

        return result;
    }
}
