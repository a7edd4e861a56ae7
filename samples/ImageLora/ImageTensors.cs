using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace ImageLora;

/// <summary>
/// Turns rows of grey 28×28 Fashion-MNIST images into the input of the imported ResNet-18: the grey value copied to the
/// three channels (values 0–255, as ML.NET's ExtractPixels gives them), enlarged to <see cref="Size"/>×<see cref="Size"/>
/// (nearest neighbour when the size is a multiple of 28, the same enlargement (a) gets at 224; bilinear otherwise), then the
/// normalisation of ML.NET's preprocessing graph (RGB → BGR, minus the mean image, resized to the size).
/// </summary>
internal sealed class ImageTensors(ImageNormalization normalization, int size)
{
    /// <summary>The side of the model's input.</summary>
    public int Size { get; } = size;

    /// <summary>The normalised batch [rows, 3, Size, Size] of <paramref name="rows"/> of <paramref name="set"/>.</summary>
    public Tensor Batch(LabelledImages set, ReadOnlySpan<int> rows)
    {
        var bytes = new byte[rows.Length * FashionMnist.Pixels];
        for (int i = 0; i < rows.Length; i++)
        {
            set.Images[rows[i]].CopyTo(bytes, i * FashionMnist.Pixels);
        }

        using var scope = NewDisposeScope();
        var grey = tensor(bytes, [rows.Length, 1, FashionMnist.Side, FashionMnist.Side]).to_type(ScalarType.Float32);
        if (Size != FashionMnist.Side)
        {
            grey = Size % FashionMnist.Side == 0
                ? nn.functional.interpolate(grey, [Size, Size], mode: InterpolationMode.Nearest)
                : nn.functional.interpolate(grey, [Size, Size], mode: InterpolationMode.Bilinear, align_corners: false);
        }

        return normalization.Apply(grey.expand(rows.Length, 3, Size, Size)).MoveToOuterDisposeScope();
    }

    /// <summary>Labels of <paramref name="rows"/> as an int64 tensor.</summary>
    public static Tensor Labels(LabelledImages set, ReadOnlySpan<int> rows)
    {
        var labels = new long[rows.Length];
        for (int i = 0; i < rows.Length; i++)
        {
            labels[i] = set.Labels[rows[i]];
        }

        return tensor(labels);
    }
}
