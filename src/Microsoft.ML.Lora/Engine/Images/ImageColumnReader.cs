using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Transforms.Image;
using SkiaSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>
/// The image family's input: reads an image column as ML.NET users have it and turns each row into the pixels the model
/// takes, planar RGB bytes [3, side, side]. Accepted column types: <see cref="MLImage"/> (<c>LoadImages</c>, or in memory
/// with <c>[ImageType(h, w)]</c>) and a vector of bytes holding an encoded image (<c>LoadRawImageBytes</c>, or a
/// <c>byte[]</c> field: PNG, JPEG, BMP, GIF, WebP, decoded by SkiaSharp as ML.NET's <see cref="MLImage"/> does). Every
/// image is converted to 32-bit RGBA first, so grey and palette images become RGB with three equal channels; the alpha
/// channel is dropped. Resizing is bilinear with antialiasing to side × side, without cropping (ML.NET's
/// <c>ResizingKind.Fill</c>).
/// </summary>
internal sealed class ImageColumnReader
{
    private ImageColumnReader(string column, bool encoded, int side)
    {
        Column = column;
        Encoded = encoded;
        Side = side;
    }

    /// <summary>The image column's name.</summary>
    public string Column { get; }

    /// <summary>True for a byte-vector column of encoded images, false for an <see cref="MLImage"/> column.</summary>
    public bool Encoded { get; }

    /// <summary>The side of the square images the model takes.</summary>
    public int Side { get; }

    /// <summary>What the image column may hold, for error messages.</summary>
    public const string ExpectedTypes = "an image (MLImage, from LoadImages) or a vector of Byte with an encoded image (from LoadRawImageBytes)";

    /// <summary>Checks the column's type and creates its reader.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The column is missing or of another type (names it, the expected and the actual type).</exception>
    public static ImageColumnReader For(DataViewSchema schema, string column, int side, string parameterName)
    {
        var found = schema.GetColumnOrNull(column)
            ?? throw new ArgumentOutOfRangeException(parameterName, $"The input has no image column '{column}' (expected {ExpectedTypes}).");
        return For(found.Type, column, side, parameterName);
    }

    /// <summary>Checks a column type and creates the reader.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The type is not an image or a byte vector.</exception>
    public static ImageColumnReader For(DataViewType type, string column, int side, string parameterName) => type switch
    {
        ImageDataViewType => new ImageColumnReader(column, encoded: false, side),
        VectorDataViewType { ItemType: var item } when item == NumberDataViewType.Byte => new ImageColumnReader(column, encoded: true, side),
        _ => throw new ArgumentOutOfRangeException(parameterName, $"The image column '{column}' has type {type}; expected {ExpectedTypes}."),
    };

    /// <summary>Whether a column shape (the estimator's schema check) can hold images.</summary>
    public static bool Accepts(SchemaShape.Column column) =>
        (column.Kind == SchemaShape.Column.VectorKind.Scalar && column.ItemType is ImageDataViewType) ||
        (column.Kind != SchemaShape.Column.VectorKind.Scalar && column.ItemType == NumberDataViewType.Byte);

    /// <summary>A reader of the current row's image of <paramref name="row"/> as planar RGB bytes [3, Side, Side].</summary>
    public Func<byte[]> CreateReader(DataViewRow row)
    {
        var column = row.Schema[Column];
        if (Encoded)
        {
            var getter = row.GetGetter<VBuffer<byte>>(column);
            VBuffer<byte> bytes = default;
            return () =>
            {
                getter(ref bytes);
                return FromEncoded(bytes, row.Position);
            };
        }

        var imageGetter = row.GetGetter<MLImage>(column);
        return () =>
        {
            MLImage image = null!;
            imageGetter(ref image);
            return FromImage(image, row.Position);
        };
    }

    private byte[] FromEncoded(VBuffer<byte> bytes, long position)
    {
        if (bytes.Length == 0)
        {
            throw Bad(position, "is empty (no image bytes)");
        }

        var data = bytes.DenseValues().ToArray();
        SKBitmap? bitmap;
        try
        {
            bitmap = SKBitmap.Decode(data);
        }
        catch (ArgumentException)
        {
            // SkiaSharp 3 throws (no codec for the data) where 2.88 returns null.
            bitmap = null;
        }

        using (bitmap)
        {
            return bitmap is null
                ? throw Bad(position, string.Create(CultureInfo.InvariantCulture, $"holds {data.Length} bytes that are not an image the decoder reads (PNG, JPEG, BMP, GIF, WebP)"))
                : FromBitmap(bitmap, position);
        }
    }

    private byte[] FromImage(MLImage? image, long position)
    {
        if (image is null)
        {
            throw Bad(position, "has no image (a missing value; LoadImages gives one for an empty path)");
        }

        return FromBitmap(MlNetImages.Bitmap(image), position);
    }

    private byte[] FromBitmap(SKBitmap bitmap, long position)
    {
        int width = bitmap.Width, height = bitmap.Height;
        if (width <= 0 || height <= 0)
        {
            throw Bad(position, string.Create(CultureInfo.InvariantCulture, $"is an image of {width}×{height} pixels"));
        }

        SKBitmap? converted = null;
        try
        {
            if (bitmap.ColorType != SKColorType.Rgba8888)
            {
                converted = bitmap.Copy(SKColorType.Rgba8888)
                    ?? throw Bad(position, $"has pixel format {bitmap.ColorType}, which cannot be converted to 8-bit RGBA");
            }

            var source = converted ?? bitmap;
            if (source.RowBytes != width * 4)
            {
                throw Bad(position, string.Create(CultureInfo.InvariantCulture, $"has {source.RowBytes} bytes per row for {width} pixels of 4 bytes"));
            }

            var pixels = source.Bytes;
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var hwc = tensor(pixels, [height, width, 4]);
            var rgb = hwc.narrow(2, 0, 3).permute(2, 0, 1).to_type(ScalarType.Float32).unsqueeze(0);
            if (width != Side || height != Side)
            {
                rgb = nn.functional.interpolate(rgb, [Side, Side], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true);
            }

            return rgb.round_().clamp_(0, 255).to_type(ScalarType.Byte).contiguous().data<byte>().ToArray();
        }
        finally
        {
            converted?.Dispose();
        }
    }

    private InvalidDataException Bad(long position, string what, Exception? inner = null) =>
        new(string.Create(CultureInfo.InvariantCulture, $"Image column '{Column}', row {position}: the value {what}."), inner);
}
