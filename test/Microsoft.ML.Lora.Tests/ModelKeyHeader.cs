using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace Microsoft.ML.Lora.Tests;

/// <summary>Reads what ML.NET's Model.key header of a saved transformer says about its format.</summary>
internal static class ModelKeyHeader
{
    /// <summary>
    /// ModelVerWritten (ML.NET's header, offset 0x48) of the Model.key whose loader signature is <paramref name="signature"/>
    /// (e.g. LORATEXT, LORAIMAG).
    /// </summary>
    public static uint WrittenFormatVersion(string modelPath, string signature)
    {
        using var zip = ZipFile.OpenRead(modelPath);
        foreach (var entry in zip.Entries.Where(e => e.FullName.EndsWith("Model.key", StringComparison.Ordinal)))
        {
            using var stream = entry.Open();
            using var buffer = new MemoryStream();
            stream.CopyTo(buffer);
            if (Encoding.ASCII.GetString(buffer.GetBuffer(), 0, (int)buffer.Length).Contains(signature, StringComparison.Ordinal))
            {
                return BinaryPrimitives.ReadUInt32LittleEndian(buffer.GetBuffer().AsSpan(0x48));
            }
        }

        throw new AssertFailedException($"{modelPath} has no transformer with model signature {signature}.");
    }
}
