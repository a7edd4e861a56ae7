using System.Reflection;
using Microsoft.ML.Data;
using SkiaSharp;

namespace Microsoft.ML.Lora.Internal;

/// <summary>
/// The bitmap inside ML.NET's <see cref="MLImage"/>. Why: <c>MLImage.Pixels</c> calls <c>SKBitmap.GetPixelSpan()</c>, whose
/// return type changed in SkiaSharp 3, so in any application that also uses SkiaSharp 3 (ScottPlot 5, for one) it throws
/// <see cref="MissingMethodException"/>. Reading the bitmap (the private field <c>_image</c> of ML.NET 5.0.1, the version
/// the package is capped at) and its pixels through members that both SkiaSharp 2.88 and 3 have works with either.
/// </summary>
internal static class MlNetImages
{
    private static readonly FieldInfo? BitmapField = typeof(MLImage).GetField("_image", BindingFlags.Instance | BindingFlags.NonPublic);

    /// <summary>The image's bitmap (owned by the image: do not dispose it).</summary>
    /// <exception cref="InvalidOperationException">This ML.NET's MLImage keeps its pixels elsewhere (a version not verified).</exception>
    public static SKBitmap Bitmap(MLImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (BitmapField?.GetValue(image) is SKBitmap bitmap)
        {
            return bitmap;
        }

        throw new InvalidOperationException(
            $"This ML.NET ({typeof(MLImage).Assembly.GetName().Version}) keeps an MLImage's pixels where Microsoft.ML.Lora does not look (verified with ML.NET 5.0.1).");
    }
}
