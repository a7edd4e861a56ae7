using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>
/// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON (name → dtype, shape,
/// data_offsets relative to the data section; optional <c>__metadata__</c> string map), then the raw little-endian data.
/// The one reader and writer of the three packages: PEFT adapters (<see cref="PeftAdapter"/>), and in
/// Microsoft.ML.Lora.Models the Hugging Face folders' <c>model.safetensors</c> (sharded too) and their export.
/// Files are written as Hugging Face's <c>safetensors</c> library writes them: keys in ordinal order, the header padded
/// with spaces to a multiple of 8 bytes.
/// </summary>
internal static class SafeTensors
{
    private static readonly Dictionary<ScalarType, (string name, int size)> Types = new()
    {
        [ScalarType.Float64] = ("F64", 8),
        [ScalarType.Float32] = ("F32", 4),
        [ScalarType.Float16] = ("F16", 2),
        [ScalarType.BFloat16] = ("BF16", 2),
        [ScalarType.Int64] = ("I64", 8),
        [ScalarType.Int32] = ("I32", 4),
        [ScalarType.Int16] = ("I16", 2),
        [ScalarType.Int8] = ("I8", 1),
        [ScalarType.Byte] = ("U8", 1),
        [ScalarType.Bool] = ("BOOL", 1),
    };

    /// <summary>Writes <paramref name="tensors"/> (sorted by name) to a temporary file next to <paramref name="path"/>, then moves it there.</summary>
    internal static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata) =>
        WriteCore(path, tensors, metadata, convertTo: null);

    /// <summary>
    /// Writes <paramref name="tensors"/> as <see cref="Write(string, IReadOnlyDictionary{string, Tensor}, IReadOnlyDictionary{string, string}?)"/>
    /// does, each converted to <paramref name="dtype"/> first (the tensors themselves are left as they are).
    /// </summary>
    internal static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata, ScalarType dtype) =>
        WriteCore(path, tensors, metadata, convertTo: dtype);

    private static void WriteCore(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata, ScalarType? convertTo)
    {
        RequireLittleEndian();
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        if (metadata is not null)
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                meta[k] = v;
            }

            header["__metadata__"] = meta;
        }

        var blobs = new List<byte[]>();
        long offset = 0;
        foreach (var name in names)
        {
            var t = tensors[name];
            var dtype = convertTo ?? t.dtype;
            if (!Types.TryGetValue(dtype, out var type))
            {
                throw new ArgumentException($"Tensor '{name}' has dtype {dtype}, which safetensors cannot store here.", nameof(tensors));
            }

            byte[] bytes;
            using (var scope = NewDisposeScope())
            {
                var stored = t.detach();
                if (stored.dtype != dtype)
                {
                    stored = stored.to_type(dtype);
                }

                bytes = stored.cpu().contiguous().bytes.ToArray();
            }

            blobs.Add(bytes);
            var shape = new JsonArray();
            foreach (var d in t.shape)
            {
                shape.Add(d);
            }

            header[name] = new JsonObject
            {
                ["dtype"] = type.name,
                ["shape"] = shape,
                ["data_offsets"] = new JsonArray(offset, offset + bytes.LongLength),
            };
            offset += bytes.LongLength;
        }

        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (json.Length + 7) / 8 * 8; // the reference writer pads the header with spaces to 8 bytes
        var headerBytes = new byte[padded];
        Array.Fill(headerBytes, (byte)' ');
        json.CopyTo(headerBytes, 0);

        AtomicFile.Write(path, stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
            stream.Write(length);
            stream.Write(headerBytes);
            foreach (var blob in blobs)
            {
                stream.Write(blob);
            }
        });
    }

    /// <summary>Reads every tensor of a safetensors file (CPU tensors owned by the caller) and its metadata.</summary>
    /// <remarks>Streams the file: the header, then each tensor's bytes straight into its storage (no whole-file buffer, so files over 2 GiB load).</remarks>
    /// <exception cref="ArgumentException">The file is not a valid safetensors file (the message names it and what is wrong).</exception>
    internal static (Dictionary<string, Tensor> tensors, Dictionary<string, string> metadata) Read(string path)
    {
        RequireLittleEndian();
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long fileLength = stream.Length;
        if (fileLength < 8)
        {
            throw Invalid(path, "shorter than its 8-byte header length");
        }

        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8))
        {
            throw Invalid(path, $"header length {headerLength} exceeds the file size {fileLength}");
        }

        if (headerLength > int.MaxValue)
        {
            throw Invalid(path, $"header length {headerLength} exceeds 2 GiB");
        }

        var headerBytes = new byte[(int)headerLength];
        stream.ReadExactly(headerBytes);
        JsonObject header;
        try
        {
            header = JsonNode.Parse(Encoding.UTF8.GetString(headerBytes))?.AsObject()
                ?? throw Invalid(path, "the header is not a JSON object");
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"'{path}' is not a valid safetensors file: its header is not JSON ({e.Message}).", nameof(path), e);
        }

        var dataStart = 8 + (long)headerLength;
        var dataLength = fileLength - dataStart;
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var (name, node) in header)
            {
                if (name == "__metadata__")
                {
                    foreach (var (k, v) in node?.AsObject() ?? [])
                    {
                        metadata[k] = v?.GetValue<string>() ?? "";
                    }

                    continue;
                }

                var entry = node?.AsObject() ?? throw Invalid(path, $"entry '{name}' is not an object");
                var dtypeName = entry["dtype"]?.GetValue<string>() ?? throw Invalid(path, $"entry '{name}' has no dtype");
                var type = Types.FirstOrDefault(t => t.Value.name == dtypeName);
                if (type.Value.name is null)
                {
                    throw Invalid(path, $"entry '{name}' has unsupported dtype {dtypeName}");
                }

                var shape = (entry["shape"]?.AsArray() ?? throw Invalid(path, $"entry '{name}' has no shape"))
                    .Select(d => d!.GetValue<long>()).ToArray();
                var offsets = (entry["data_offsets"]?.AsArray() ?? throw Invalid(path, $"entry '{name}' has no data_offsets"))
                    .Select(d => d!.GetValue<long>()).ToArray();
                var count = shape.Aggregate(1L, (a, b) => a * b);
                if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] > dataLength || offsets[1] - offsets[0] != count * type.Value.size)
                {
                    throw Invalid(path, $"entry '{name}' has data_offsets [{string.Join(", ", offsets)}], which do not hold {count} {dtypeName} values within {dataLength} data bytes");
                }

                var tensor = empty(shape, dtype: type.Key);
                tensors[name] = tensor.DetachFromDisposeScope();
                stream.Position = dataStart + offsets[0];
                stream.ReadExactly(tensor.bytes);
            }
        }
        catch
        {
            foreach (var t in tensors.Values)
            {
                t.Dispose();
            }

            throw;
        }

        return (tensors, metadata);
    }

    private static void RequireLittleEndian()
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("safetensors data is little-endian; reading or writing it needs a little-endian machine.");
        }
    }

    private static ArgumentException Invalid(string path, string what) =>
        new($"'{path}' is not a valid safetensors file: {what}.", nameof(path));
}
