using System.Globalization;
using System.Security.Cryptography;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Internal;

/// <summary>
/// The parts every LoRA model file (text: <see cref="LoraModelFile"/>, images: <see cref="LoraImageModelFile"/>) writes the
/// same way, in one place: the reader-version check, the label section (task, class count, key value type and values),
/// and the adapter tensors (<see cref="TensorFile"/> bytes, their SHA-256 in hex in Model.key, the bytes in their own
/// zip entry). Each file decides where in its layout a section goes; the bytes of a section never depend on the file.
/// </summary>
internal static class ModelFileSections
{
    /// <summary>Refuses a file that needs a newer reader than <paramref name="readableUpTo"/>, naming both versions.</summary>
    /// <param name="ctx">The load context.</param>
    /// <param name="readableUpTo">The newest format version this build reads.</param>
    /// <param name="what">The file, as the error names it (e.g. "LoRA image model").</param>
    /// <exception cref="InvalidDataException">The file needs a newer reader.</exception>
    public static void CheckReadable(ModelLoadContext ctx, uint readableUpTo, string what)
    {
        if (ctx.Header.ModelVerReadable > readableUpTo)
        {
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                $"This {what} file has format version 0x{ctx.Header.ModelVerWritten:X8} and needs a reader of version 0x{ctx.Header.ModelVerReadable:X8} or later; " +
                $"this Microsoft.ML.Lora ({typeof(ModelFileSections).Assembly.GetName().Version}) reads format versions up to 0x{readableUpTo:X8}. Update the Microsoft.ML.Lora package."));
        }
    }

    /// <summary>Writes the task (int32), the class count (int32), the key value type's name and the key values (count, then each string).</summary>
    public static void WriteLabel(BinaryWriter w, LabelInfo label)
    {
        w.Write((int)label.Kind);
        w.Write(label.ClassCount);
        w.Write(LabelInfo.TypeName(label.KeyValueType));
        w.Write(label.KeyValues?.Count ?? 0);
        foreach (var value in label.KeyValues ?? [])
        {
            w.Write(value);
        }
    }

    /// <summary>Reads what <see cref="WriteLabel"/> wrote.</summary>
    /// <exception cref="InvalidDataException">The task is unknown.</exception>
    public static LabelInfo ReadLabel(BinaryReader r, string what)
    {
        var task = (LoraTaskKind)r.ReadInt32();
        if (!Enum.IsDefined(task))
        {
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture, $"Unknown task {(int)task} in this {what} file."));
        }

        int classCount = r.ReadInt32();
        var keyValueType = LabelInfo.ParseTypeName(r.ReadString());
        var keyValues = new string[r.ReadInt32()];
        for (int i = 0; i < keyValues.Length; i++)
        {
            keyValues[i] = r.ReadString();
        }

        return LabelInfo.Create(task, classCount, keyValues.Length > 0 ? keyValueType : null, keyValues.Length > 0 ? keyValues : null);
    }

    /// <summary>The <see cref="TensorFile"/> bytes of <paramref name="state"/> and their SHA-256 (upper-case hex, as Model.key records it).</summary>
    public static (byte[] Bytes, string Sha256) EncodeTensors(SortedDictionary<string, Tensor> state)
    {
        using var tensors = new MemoryStream();
        using (var tensorWriter = new BinaryWriter(tensors, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            TensorFile.Write(tensorWriter, state);
        }

        var bytes = tensors.ToArray();
        return (bytes, Convert.ToHexString(SHA256.HashData(bytes)));
    }

    /// <summary>
    /// Reads the tensor entry <paramref name="entryName"/>, first checking its bytes against the SHA-256 recorded in
    /// Model.key (<paramref name="checksum"/>; null for files written before checksums).
    /// </summary>
    /// <exception cref="InvalidDataException">The entry is missing, or its bytes do not match the recorded SHA-256.</exception>
    public static SortedDictionary<string, Tensor> ReadTensors(ModelLoadContext ctx, string entryName, string? checksum, string what)
    {
        SortedDictionary<string, Tensor>? state = null;
        if (!ctx.TryLoadBinaryStream(entryName, reader => state = ReadTensors(reader, entryName, checksum, what)) || state is null)
        {
            throw new InvalidDataException($"This {what} file has no '{entryName}' entry with the adapter tensors.");
        }

        return state;
    }

    private static SortedDictionary<string, Tensor> ReadTensors(BinaryReader reader, string entryName, string? checksum, string what)
    {
        if (checksum is null)
        {
            return TensorFile.Read(reader);
        }

        using var bytes = new MemoryStream();
        reader.BaseStream.CopyTo(bytes);
        string actual = Convert.ToHexString(SHA256.HashData(bytes.GetBuffer().AsSpan(0, (int)bytes.Length)));
        if (!string.Equals(actual, checksum, StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidDataException(
                $"The '{entryName}' entry of this {what} file is damaged: its SHA-256 is {actual}, the model file recorded {checksum}.");
        }

        bytes.Position = 0;
        using var copy = new BinaryReader(bytes, System.Text.Encoding.UTF8, leaveOpen: true);
        return TensorFile.Read(copy);
    }
}
