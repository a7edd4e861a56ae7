using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// Images for the image-model tests, RGB [N, 3, side, side] float32 with pixel values 0–255: real Fashion-MNIST images from
/// the committed fixture (grey, enlarged bilinearly and replicated into three channels) and deterministic colour images
/// (so that a wrong channel order shows).
/// </summary>
internal static class TestImages
{
    public const string FashionFixture = "Fixtures/fashion-mnist-t10k-first4.bin";

    /// <summary>The first <paramref name="count"/> (≤ 4) Fashion-MNIST test images, enlarged to <paramref name="side"/>.</summary>
    public static Tensor Fashion(int count, long side)
    {
        byte[] bytes = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, FashionFixture));
        Assert.AreEqual(4 * 28 * 28, bytes.Length, "fixture size");
        using var scope = NewDisposeScope();
        var grey = tensor(bytes.AsSpan(0, count * 28 * 28).ToArray(), [count, 1, 28, 28]).to_type(ScalarType.Float32);
        var large = nn.functional.interpolate(grey, [side, side], mode: InterpolationMode.Bilinear, align_corners: false);
        return large.expand(count, 3, side, side).contiguous().clamp_(0, 255).MoveToOuterDisposeScope();
    }

    /// <summary>Smooth colour images: different gradients and waves per channel, varying with the image index.</summary>
    public static Tensor Colour(int count, long side)
    {
        using var scope = NewDisposeScope();
        var y = linspace(0, 1, side).reshape(1, side, 1);
        var x = linspace(0, 1, side).reshape(1, 1, side);
        var images = new List<Tensor>();
        for (int i = 0; i < count; i++)
        {
            var r = x.mul(255.0 - 40 * i).expand(1, side, side);
            var g = y.mul(200).add(20 * i).expand(1, side, side);
            var b = sin(x.mul(6.0 + 3 * i).add(y.mul(4))).add(1).mul(127.5);
            images.Add(cat([r, g, b], 0));
        }

        return stack(images).clamp_(0, 255).contiguous().MoveToOuterDisposeScope();
    }
}
