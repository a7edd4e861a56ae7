using System.Buffers.Binary;
using System.IO.Compression;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Small seeded image files for the image fine-tuning tests: three classes that differ in dominant colour and pattern
/// (red horizontal stripes, green vertical stripes, blue checkerboard) at varying sizes, written as 8-bit RGB PNG files
/// (colour type 2); and an 8-bit greyscale PNG (colour type 0), which the decoder must turn into RGB. The PNG writer is
/// here (zlib from .NET, CRC-32 below), so the files do not depend on the decoder under test.
/// </summary>
internal static class TestImageFiles
{
    public static readonly string[] Classes = ["red", "green", "blue"];

    /// <summary>Writes <paramref name="perClass"/> images of each class to <paramref name="directory"/>; returns (path, class) in a seeded order.</summary>
    public static List<(string Path, string Label)> Write(string directory, int perClass, int seed)
    {
        Directory.CreateDirectory(directory);
        var random = new Random(seed);
        var result = new List<(string, string)>();
        for (int i = 0; i < perClass; i++)
        {
            for (int c = 0; c < Classes.Length; c++)
            {
                int width = 40 + random.Next(17), height = 40 + random.Next(17);
                var rgb = new byte[width * height * 3];
                for (int y = 0; y < height; y++)
                {
                    for (int x = 0; x < width; x++)
                    {
                        bool on = c switch
                        {
                            0 => (y / 4) % 2 == 0,
                            1 => (x / 4) % 2 == 0,
                            _ => ((x / 6) + (y / 6)) % 2 == 0,
                        };
                        int strong = on ? 210 : 120, weak = on ? 60 : 30;
                        int p = (y * width + x) * 3;
                        for (int k = 0; k < 3; k++)
                        {
                            int value = (k == c ? strong : weak) + random.Next(-25, 26);
                            rgb[p + k] = (byte)Math.Clamp(value, 0, 255);
                        }
                    }
                }

                string path = Path.Combine(directory, $"{Classes[c]}-{i:D2}.png");
                File.WriteAllBytes(path, Png(width, height, 3, rgb));

                result.Add((path, Classes[c]));
            }
        }

        return result;
    }

    /// <summary>An 8-bit greyscale PNG (colour type 0) of <paramref name="width"/> × <paramref name="height"/> with a horizontal ramp.</summary>
    public static byte[] GreyPng(int width, int height)
    {
        var grey = new byte[width * height];
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                grey[(y * width) + x] = (byte)(x * 255 / Math.Max(1, width - 1));
            }
        }

        return Png(width, height, 1, grey);
    }

    /// <summary>
    /// An alpha-only PNG: grey + alpha (colour type 4) whose <c>sBIT</c> chunk says the grey channel carries 1 significant
    /// bit and the alpha 8. Skia's PNG decoder (SkiaSharp, ML.NET's decoder) reads such a file as an alpha mask, a bitmap of
    /// colour type Alpha8, which has no colour to convert to RGBA.
    /// </summary>
    public static byte[] AlphaOnlyPng(int width, int height)
    {
        var pixels = new byte[width * height * 2];
        for (int i = 0; i < width * height; i++)
        {
            pixels[2 * i] = 0;
            pixels[(2 * i) + 1] = (byte)(i * 255 / Math.Max(1, (width * height) - 1));
        }

        return Png(width, height, 2, pixels, significantBits: [1, 8]);
    }

    /// <summary>
    /// An 8-bit PNG of row-major pixels with 1 (grey, colour type 0), 2 (grey + alpha, colour type 4) or 3 (RGB, colour
    /// type 2) channels, with an optional <c>sBIT</c> chunk (significant bits per channel).
    /// </summary>
    public static byte[] Png(int width, int height, int channels, byte[] pixels, byte[]? significantBits = null)
    {
        var raw = new MemoryStream();
        for (int y = 0; y < height; y++)
        {
            raw.WriteByte(0); // filter: none
            raw.Write(pixels, y * width * channels, width * channels);
        }

        var compressed = new MemoryStream();
        using (var zlib = new ZLibStream(compressed, CompressionLevel.Optimal, leaveOpen: true))
        {
            raw.Position = 0;
            raw.CopyTo(zlib);
        }

        var png = new MemoryStream();
        png.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
        header[8] = 8; // bit depth
        header[9] = channels switch { 1 => 0, 2 => 4, _ => 2 }; // colour type: greyscale, greyscale + alpha, RGB
        Chunk(png, "IHDR", header);
        if (significantBits is not null)
        {
            Chunk(png, "sBIT", significantBits);
        }

        Chunk(png, "IDAT", compressed.ToArray());
        Chunk(png, "IEND", []);
        return png.ToArray();
    }

    private static void Chunk(Stream png, string type, byte[] data)
    {
        var buffer = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(buffer, data.Length);
        png.Write(buffer);
        var typed = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        png.Write(typed);
        BinaryPrimitives.WriteUInt32BigEndian(buffer, Crc32(typed));
        png.Write(buffer);
    }

    private static uint Crc32(byte[] bytes)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in bytes)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++)
            {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320 : crc >> 1;
            }
        }

        return ~crc;
    }
}
