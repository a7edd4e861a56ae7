using Microsoft.ML.Lora.Models.Onnx;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Vision;

/// <summary>
/// The input normalisation of an image model, read from its preprocessing graph: a channel reordering and the subtraction of
/// a mean image. For the ML.NET ResNet-18 (<see cref="DnnImageModels.ResNetPreprocessPath"/>) the graph splits the RGB input
/// [1, 3, 224, 224] (pixel values 0–255, as ML.NET's ExtractPixels gives them) into channels, concatenates them as BGR and
/// subtracts a fixed 3×224×224 BGR mean image (per-channel averages 103.06, 115.90, 123.15); there is no scaling.
/// </summary>
/// <remarks>
/// At another image size the mean image is resized to it (bilinear, align_corners = false) — an approximation the graph
/// does not define, since it only accepts 224×224.
/// </remarks>
public sealed class ImageNormalization : IDisposable
{
    private readonly long[] channelOrder;

    private ImageNormalization(long[] channelOrder, Tensor meanImage)
    {
        this.channelOrder = channelOrder;
        MeanImage = meanImage;
    }

    /// <summary>The mean image [C, H, W] subtracted after reordering (in the model's channel order).</summary>
    public Tensor MeanImage { get; }

    /// <summary>For each output channel, the input channel it takes (ResNet-18: [2, 1, 0], RGB → BGR).</summary>
    public IReadOnlyList<long> ChannelOrder => channelOrder;

    /// <summary>
    /// Reads a preprocessing graph made of an optional channel reordering (Split along axis 1, then Concat along axis 1)
    /// followed by <c>Sub</c> of a constant mean image.
    /// </summary>
    /// <param name="path">The preprocessing .onnx file (ML.NET's <c>ResNetPreprocess.onnx</c>).</param>
    /// <returns>The normalisation.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The graph has another shape.</exception>
    public static ImageNormalization FromOnnx(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"ONNX model '{path}' does not exist.", path);
        }

        using var stream = File.OpenRead(path);
        var graph = OnnxGraph.Read(stream, path);
        InvalidDataException Error(string m) => new($"{path} is not a preprocessing graph of the expected form (channel reorder, then Sub of a mean image): {m}.");
        var sub = graph.Graph.Node.SingleOrDefault(n => n.OpType == "Sub") ?? throw Error("no single Sub node");
        if (!graph.Initializers.TryGetValue(sub.Input[1], out var meanProto) || meanProto.Dims.Count < 3)
        {
            throw Error($"the Sub's second input '{sub.Input[1]}' is not a mean-image initialiser");
        }

        long channels = meanProto.Dims[^3];
        long[] order = [.. Enumerable.Range(0, (int)channels).Select(i => (long)i)];
        if (graph.Producers.TryGetValue(sub.Input[0], out var concat))
        {
            if (concat.OpType != "Concat" || OnnxGraph.Int(concat, "axis", 0) != 1)
            {
                throw Error($"the Sub's input comes from {concat.OpType} '{concat.Name}', expected a Concat along axis 1");
            }

            var split = graph.Producers.TryGetValue(concat.Input[0], out var s) ? s : null;
            if (split is null || split.OpType != "Split" || OnnxGraph.Int(split, "axis", 0) != 1 || concat.Input.Count != channels
                || (OnnxGraph.Ints(split, "split") is { } sizes && sizes.Any(v => v != 1)))
            {
                throw Error("the Concat does not reorder the single-channel outputs of one Split along axis 1");
            }

            order = [.. concat.Input.Select(i => (long)split.Output.IndexOf(i))];
            if (order.Any(i => i < 0) || order.Distinct().Count() != order.Length)
            {
                throw Error("the Concat's inputs are not a permutation of the Split's outputs");
            }
        }

        var values = OnnxTensor.ToFloat32(meanProto, Path.GetDirectoryName(Path.GetFullPath(path)));
        var mean = tensor(values, [.. meanProto.Dims], ScalarType.Float32).reshape(channels, meanProto.Dims[^2], meanProto.Dims[^1]);
        return new ImageNormalization(order, mean);
    }

    /// <summary>
    /// Normalises RGB images [N, 3, H, W] with pixel values 0–255: reorders the channels and subtracts the mean image (resized
    /// when H×W differs from it).
    /// </summary>
    /// <param name="rgb">float32 images, values 0–255, channels in the graph's input order (RGB for ML.NET's ResNet-18).</param>
    /// <returns>The model input, on the device of <paramref name="rgb"/>.</returns>
    /// <exception cref="ArgumentException">The images are not [N, C, H, W] with the graph's channel count.</exception>
    public Tensor Apply(Tensor rgb)
    {
        ArgumentNullException.ThrowIfNull(rgb);
        if (rgb.dim() != 4 || rgb.shape[1] != channelOrder.Length)
        {
            throw new ArgumentException($"Expected images [N, {channelOrder.Length}, H, W], got [{string.Join(", ", rgb.shape)}].", nameof(rgb));
        }

        using var scope = NewDisposeScope();
        var reordered = rgb.to_type(ScalarType.Float32).index_select(1, tensor(channelOrder, device: rgb.device));
        var mean = MeanImage.to(rgb.device).unsqueeze(0);
        if (mean.shape[2] != rgb.shape[2] || mean.shape[3] != rgb.shape[3])
        {
            mean = nn.functional.interpolate(mean, [rgb.shape[2], rgb.shape[3]], mode: InterpolationMode.Bilinear, align_corners: false);
        }

        return reordered.sub_(mean).MoveToOuterDisposeScope();
    }

    /// <summary>Frees the mean image.</summary>
    public void Dispose() => MeanImage.Dispose();
}
