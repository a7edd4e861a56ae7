using System.Buffers.Binary;
using System.Globalization;
using Microsoft.ML.Lora.Models.Onnx.Proto;

namespace Microsoft.ML.Lora.Models.Onnx;

/// <summary>Decodes the values of an ONNX <see cref="TensorProto"/> (raw_data, typed fields or external data).</summary>
internal static class OnnxTensor
{
    public const int Float = 1;
    public const int Int32 = 6;
    public const int Int64 = 7;
    public const int Float16 = 10;
    public const int Double = 11;
    public const int BFloat16 = 16;

    public static bool IsFloatingPoint(TensorProto t) => t.DataType is Float or Float16 or Double or BFloat16;

    public static long ElementCount(TensorProto t) => t.Dims.Aggregate(1L, (a, d) => a * d);

    /// <summary>The values as float32, row-major.</summary>
    public static float[] ToFloat32(TensorProto t, string? baseDirectory)
    {
        long count = ElementCount(t);
        var raw = RawBytes(t, baseDirectory);
        float[] result = new float[count];
        if (raw is not null)
        {
            int width = t.DataType switch { Float => 4, Float16 or BFloat16 => 2, Double => 8, _ => throw Unsupported(t) };
            if (raw.Length != count * width)
            {
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"ONNX tensor '{t.Name}' has {raw.Length} data bytes, expected {count * width} for shape [{string.Join(", ", t.Dims)}]."));
            }

            for (int i = 0; i < count; i++)
            {
                result[i] = t.DataType switch
                {
                    Float => BinaryPrimitives.ReadSingleLittleEndian(raw.AsSpan(i * 4)),
                    Float16 => (float)BinaryPrimitives.ReadHalfLittleEndian(raw.AsSpan(i * 2)),
                    BFloat16 => BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(i * 2)) << 16),
                    _ => (float)BinaryPrimitives.ReadDoubleLittleEndian(raw.AsSpan(i * 8)),
                };
            }

            return result;
        }

        switch (t.DataType)
        {
            case Float:
                CheckCount(t, t.FloatData.Count, count);
                t.FloatData.CopyTo(result, 0);
                break;
            case Float16:
                CheckCount(t, t.Int32Data.Count, count);
                for (int i = 0; i < count; i++)
                {
                    result[i] = (float)BitConverter.UInt16BitsToHalf((ushort)t.Int32Data[i]);
                }

                break;
            case BFloat16:
                CheckCount(t, t.Int32Data.Count, count);
                for (int i = 0; i < count; i++)
                {
                    result[i] = BitConverter.Int32BitsToSingle((t.Int32Data[i] & 0xFFFF) << 16);
                }

                break;
            case Double:
                CheckCount(t, t.DoubleData.Count, count);
                for (int i = 0; i < count; i++)
                {
                    result[i] = (float)t.DoubleData[i];
                }

                break;
            default:
                throw Unsupported(t);
        }

        return result;
    }

    /// <summary>Integer values (int64 or int32 tensors), or null for other types.</summary>
    public static long[]? ToInt64(TensorProto t, string? baseDirectory)
    {
        long count = ElementCount(t);
        var raw = RawBytes(t, baseDirectory);
        if (t.DataType == Int64)
        {
            if (raw is not null)
            {
                return Enumerable.Range(0, (int)count).Select(i => BinaryPrimitives.ReadInt64LittleEndian(raw.AsSpan(i * 8))).ToArray();
            }

            return [.. t.Int64Data];
        }

        if (t.DataType == Int32)
        {
            if (raw is not null)
            {
                return Enumerable.Range(0, (int)count).Select(i => (long)BinaryPrimitives.ReadInt32LittleEndian(raw.AsSpan(i * 4))).ToArray();
            }

            return t.Int32Data.Select(v => (long)v).ToArray();
        }

        return null;
    }

    /// <summary>A scalar (or one-element) floating-point value, or null.</summary>
    public static double? ToScalar(TensorProto t, string? baseDirectory)
    {
        if (!IsFloatingPoint(t) || ElementCount(t) != 1)
        {
            return null;
        }

        float value = ToFloat32(t, baseDirectory)[0];

        // Shortest text that round-trips the float32, so 1e-12 stored as float reads back as 1e-12.
        return double.Parse(value.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
    }

    private static byte[]? RawBytes(TensorProto t, string? baseDirectory)
    {
        if (t.DataLocation == 1)
        {
            return ReadExternal(t, baseDirectory);
        }

        return t.RawData.IsEmpty && ElementCount(t) > 0 ? null : t.RawData.ToByteArray();
    }

    private static byte[] ReadExternal(TensorProto t, string? baseDirectory)
    {
        var entries = t.ExternalData.ToDictionary(e => e.Key, e => e.Value, StringComparer.Ordinal);
        if (!entries.TryGetValue("location", out var location) || baseDirectory is null)
        {
            throw new InvalidDataException($"ONNX tensor '{t.Name}' uses external data without a readable location (the model must be loaded from a file).");
        }

        if (Path.IsPathRooted(location) || location.Contains("..", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"ONNX tensor '{t.Name}' has an invalid external data location '{location}'.");
        }

        string path = Path.Combine(baseDirectory, location);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"External data file '{path}' of ONNX tensor '{t.Name}' does not exist.", path);
        }

        long offset = entries.TryGetValue("offset", out var o) ? long.Parse(o, CultureInfo.InvariantCulture) : 0;
        using var stream = File.OpenRead(path);
        long length = entries.TryGetValue("length", out var l) ? long.Parse(l, CultureInfo.InvariantCulture) : stream.Length - offset;
        var buffer = new byte[length];
        stream.Position = offset;
        stream.ReadExactly(buffer);
        return buffer;
    }

    private static void CheckCount(TensorProto t, int actual, long expected)
    {
        if (actual != expected)
        {
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                $"ONNX tensor '{t.Name}' has {actual} values, expected {expected} for shape [{string.Join(", ", t.Dims)}]."));
        }
    }

    private static InvalidDataException Unsupported(TensorProto t) =>
        new(string.Create(CultureInfo.InvariantCulture, $"ONNX tensor '{t.Name}' has data type {t.DataType}; float32, float16, bfloat16 or double weights are expected."));
}
