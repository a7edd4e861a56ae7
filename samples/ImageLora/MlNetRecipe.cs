using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Trainers;

namespace ImageLora;

/// <summary>
/// (a) ML.NET's classic image-classification recipe: a frozen pretrained featurizer and a linear trainer. Each grey 28×28
/// image becomes the pixel vector ML.NET's <c>ExtractPixels</c> makes of a 224×224 RGB image (channels R, G, B one after
/// the other, values 0–255): the grey value copied to the three channels and enlarged 8× by nearest neighbour (224 is the
/// only size the ONNX graph accepts); then <c>DnnFeaturizeImage</c> (ResNet-18: the package's preprocessing graph and
/// model, 512 features) → <c>LbfgsMaximumEntropy</c>.
/// </summary>
/// <remarks>
/// The pixels are made here rather than by <c>ExtractPixels</c> from an in-memory <c>MLImage</c> because ML.NET 5.0.1's
/// image types are built against SkiaSharp 2.88, and ScottPlot 5.1.59 (the charts) brings SkiaSharp 3.119, whose
/// <c>SKBitmap.GetPixelSpan</c> differs: in one process <c>MLImage.Pixels</c> fails with a MissingMethodException. The
/// vector is the same one <c>ExtractPixels</c> would give for the enlarged image.
/// </remarks>
internal static class MlNetRecipe
{
    /// <summary>The ONNX graph's input side.</summary>
    public const int Side = 224;

    public static RunResult Run(MLContext ml, SampleData data, string workDirectory, Action<string> log)
    {
        var train = ml.Data.LoadFromEnumerable(Rows(data.Train));
        var test = ml.Data.LoadFromEnumerable(Rows(data.Test));
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.DnnFeaturizeImage("Features", m => m.ModelSelector.ResNet18(ml, m.OutputColumn, m.InputColumn), nameof(PixelRow.Pixels)))
            // The features are computed once; L-BFGS reads them many times.
            .AppendCacheCheckpoint(ml)
            // One thread: L-BFGS's multi-threaded gradient sums are not reproducible run to run.
            .Append(ml.MulticlassClassification.Trainers.LbfgsMaximumEntropy(new LbfgsMaximumEntropyMulticlassTrainer.Options { NumberOfThreads = 1 }))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));

        var watch = Stopwatch.StartNew();
        var model = pipeline.Fit(train);
        var trainingTime = watch.Elapsed;
        log($"  (a) fitted in {trainingTime.TotalSeconds:F0} s");

        watch.Restart();
        // Scored from the predicted class names, as for (b) and (c) (ML.NET's evaluator would skip test rows whose class the
        // training rows lack; with the sample's counts every class is there and the two agree).
        int[] predicted = [.. model.Transform(test).GetColumn<string>("PredictedLabel").Select(name => Array.IndexOf(FashionMnist.ClassNames, name))];
        var predictTime = watch.Elapsed;

        string path = Path.Combine(workDirectory, "ImageLora.mlnet-recipe.zip");
        string tmp = path + ".tmp";
        ml.Model.Save(model, train.Schema, tmp);
        File.Move(tmp, path, overwrite: true);
        var linear = ((IEnumerable<ITransformer>)model).OfType<MulticlassPredictionTransformer<MaximumEntropyModelParameters>>().Single();
        VBuffer<float>[]? weights = null;
        linear.Model.GetWeights(ref weights, out int classes);
        long trainable = weights!.Sum(w => (long)w.Length) + classes;
        return new RunResult("(a) ML.NET: ResNet-18 features + LbfgsMaximumEntropy", predicted, trainingTime, predictTime, trainable,
            new FileInfo(path).Length, []);
    }

    /// <summary>Rows with a new pixel vector each time they are enumerated (ML.NET reads them lazily: 588 KiB a row).</summary>
    private static IEnumerable<PixelRow> Rows(LabelledImages set)
    {
        for (int i = 0; i < set.Count; i++)
        {
            yield return new PixelRow { Pixels = Enlarge(set.Images[i]), Label = FashionMnist.ClassNames[set.Labels[i]] };
        }
    }

    /// <summary>
    /// A grey 28×28 image as ExtractPixels' vector of a 224×224 RGB image: planes R, G, B, each pixel an 8×8 block.
    /// </summary>
    public static float[] Enlarge(byte[] grey)
    {
        const int scale = Side / FashionMnist.Side;
        const int plane = Side * Side;
        var pixels = new float[3 * plane];
        for (int y = 0; y < Side; y++)
        {
            for (int x = 0; x < Side; x++)
            {
                float v = grey[(y / scale) * FashionMnist.Side + x / scale];
                int o = y * Side + x;
                pixels[o] = v;
                pixels[plane + o] = v;
                pixels[2 * plane + o] = v;
            }
        }

        return pixels;
    }

    /// <summary>An image as ExtractPixels gives it: [3, 224, 224] floats, channels R, G, B, values 0–255.</summary>
    private sealed class PixelRow
    {
        [VectorType(3, Side, Side)]
        public float[] Pixels { get; set; } = [];

        public string Label { get; set; } = string.Empty;
    }
}
