using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Writes a safetensors file as the Hugging Face <c>safetensors</c> library does: an 8-byte little-endian header
/// length, a JSON header (with <c>"__metadata__": {"format": "pt"}</c>, padded with spaces to a multiple of 8 bytes),
/// then the float32 little-endian data of each tensor in key order. Written to a temporary file, then moved.
/// </summary>
internal static class SafetensorsWriter
{
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("Writing safetensors requires a little-endian machine.");
        }

        var keys = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var data = new List<float[]>(keys.Count);
        var header = new Dictionary<string, object>(StringComparer.Ordinal)
        {
            ["__metadata__"] = new Dictionary<string, string> { ["format"] = "pt" },
        };
        long offset = 0;
        foreach (string key in keys)
        {
            Tensor tensor = tensors[key];
            using var cpu = tensor.detach().to_type(ScalarType.Float32).cpu().contiguous();
            float[] values = cpu.data<float>().ToArray();
            data.Add(values);
            long length = (long)values.Length * sizeof(float);
            header[key] = new Dictionary<string, object>
            {
                ["dtype"] = "F32",
                ["shape"] = tensor.shape,
                ["data_offsets"] = new[] { offset, offset + length },
            };
            offset += length;
        }

        byte[] json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int padded = (json.Length + 7) / 8 * 8;
        AtomicFile.Write(path, stream =>
        {
            Span<byte> lengthBytes = stackalloc byte[8];
            BitConverter.TryWriteBytes(lengthBytes, (ulong)padded);
            stream.Write(lengthBytes);
            stream.Write(json);
            for (int i = json.Length; i < padded; i++)
            {
                stream.WriteByte((byte)' ');
            }

            foreach (float[] values in data)
            {
                stream.Write(MemoryMarshal.AsBytes(values.AsSpan()));
            }
        });
    }
}
