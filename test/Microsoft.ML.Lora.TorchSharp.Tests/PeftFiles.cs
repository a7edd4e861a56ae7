using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Microsoft.ML.Lora.Tests;

/// <summary>Writes and inspects PEFT adapter files by hand, from the published safetensors layout (not with the library's writer).</summary>
internal static class PeftFiles
{
    /// <summary>8-byte little-endian header length, JSON header (dtype F32, shape, data_offsets), raw little-endian floats.</summary>
    internal static void WriteSafetensors(string path, params (string key, long[] shape, float[] data)[] entries)
    {
        var header = new StringBuilder("{\"__metadata__\":{\"format\":\"pt\"}");
        long offset = 0;
        foreach (var (key, shape, data) in entries)
        {
            var length = data.Length * 4L;
            header.Append(System.Globalization.CultureInfo.InvariantCulture, $",\"{key}\":{{\"dtype\":\"F32\",\"shape\":[{string.Join(",", shape)}],\"data_offsets\":[{offset},{offset + length}]}}");
            offset += length;
        }

        header.Append('}');
        var headerBytes = Encoding.UTF8.GetBytes(header.ToString());
        using var file = File.Create(path);
        var length8 = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length8, (ulong)headerBytes.Length);
        file.Write(length8);
        file.Write(headerBytes);
        var four = new byte[4];
        foreach (var (_, _, data) in entries)
        {
            foreach (var v in data)
            {
                BinaryPrimitives.WriteSingleLittleEndian(four, v);
                file.Write(four);
            }
        }
    }

    /// <summary>The JSON header of a safetensors file, parsed by hand.</summary>
    internal static JsonDocument ReadHeader(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var length = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        return JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, length));
    }

    /// <summary>The float32 values of tensor <paramref name="key"/>, read by hand from the data section.</summary>
    internal static float[] ReadFloats(string path, string key)
    {
        var bytes = File.ReadAllBytes(path);
        var length = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, length));
        var entry = header.RootElement.GetProperty(key);
        Assert.AreEqual("F32", entry.GetProperty("dtype").GetString());
        var begin = entry.GetProperty("data_offsets")[0].GetInt64();
        var end = entry.GetProperty("data_offsets")[1].GetInt64();
        var values = new float[(end - begin) / 4];
        for (var i = 0; i < values.Length; i++)
        {
            values[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan((int)(8 + length + begin + 4 * i), 4));
        }

        return values;
    }

    /// <summary>Deterministic, varied values for a hand-written tensor.</summary>
    internal static float[] Values(int count, int salt) =>
        Enumerable.Range(0, count).Select(i => (float)((((i * 7) + (salt * 5)) % 11) - 5) * 0.1f).ToArray();

    internal static string TempDir()
    {
        var dir = Path.Combine(Path.GetTempPath(), "peft-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }
}
