using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Lora;
using SkiaSharp;

namespace ImageLora;

/// <summary>
/// (b) through ML.NET: <c>mlContext.Transforms.LoraFineTuneImage</c> on an <see cref="IDataView"/> of the Fashion-MNIST
/// images (each a PNG of its 28×28 grey pixels in a <c>byte[]</c> column, the form <c>LoadRawImageBytes</c> gives) with a
/// key label. The estimator imports the same ResNet-18 into TorchSharp, resizes each image to
/// <see cref="RunSettings.Size"/> (bilinear with antialiasing), puts LoRA on the convolutions that
/// <see cref="RunSettings.TargetModules"/> names and trains them together with a new linear head; the validation images
/// give the per-epoch curve (through <see cref="LoraImageFineTuningOptions.Progress"/>) and pick the epoch whose adapter
/// is kept (the lowest validation loss).
/// </summary>
internal static class MlNetLoraRun
{
    public static RunResult Run(MLContext ml, RunSettings settings, SampleData data, string workDirectory, Action<string> log)
    {
        var train = ml.Data.LoadFromEnumerable(Rows(data.Train));
        var validation = ml.Data.LoadFromEnumerable(Rows(data.Validation));
        var test = ml.Data.LoadFromEnumerable(Rows(data.Test));

        // The key values are the class names in their order: key k + 1 is class k, in training, validation and test alike.
        var classes = ml.Data.LoadFromEnumerable(FashionMnist.ClassNames.Select(name => new ClassName { Label = name }));
        var toKey = ml.Transforms.Conversion.MapValueToKey(nameof(ImageRow.Label), keyData: classes);
        var curve = new List<EpochPoint>();
        var options = new LoraImageFineTuningOptions
        {
            ImageColumnName = nameof(ImageRow.Image),
            BaseModelPath = settings.ResNetPath,
            PreprocessModelPath = settings.PreprocessPath,
            ImageSize = settings.Size,
            Rank = settings.Rank,
            Alpha = settings.Alpha,
            TargetModules = settings.TargetModules,
            MaxEpochs = settings.Epochs,
            LearningRate = settings.LearningRate,
            BatchSize = settings.BatchSize,
            WeightDecay = 0,
            ClipNorm = 1.0,
            ShuffleBufferSize = data.Train.Count,
            InferenceBatchSize = 128,
            ValidationSet = toKey.Fit(validation).Transform(validation),
            // Every planned epoch runs (the curve has one point each); the adapter of the best validation loss is kept.
            EarlyStoppingPatience = settings.Epochs,
            // No reports within an epoch: the report at each epoch's end then carries the epoch's mean training loss.
            ProgressInterval = int.MaxValue,
            Progress = new EpochRecorder(curve, log),
        };
        var pipeline = toKey.Append(ml.Transforms.LoraFineTuneImage(options));

        var watch = Stopwatch.StartNew();
        var model = pipeline.Fit(train);
        var trainingTime = watch.Elapsed;
        log($"  (b) fitted in {trainingTime.TotalSeconds:F0} s (including the validation pass after each epoch)");

        watch.Restart();
        var scored = model.Transform(test);
        int[] predicted = [.. scored.GetColumn<uint>(options.PredictedLabelColumnName).Select(key => (int)key - 1)];
        var predictTime = watch.Elapsed;
        var metrics = ml.MulticlassClassification.Evaluate(scored);
        log($"  (b) ML.NET evaluator: micro-accuracy {metrics.MicroAccuracy:F4}, macro-accuracy {metrics.MacroAccuracy:F4}, log-loss {metrics.LogLoss:F4}");

        // What must be stored beside the base: ML.NET's model file (the key mapping, the LoRA factors and the head; the
        // base is referenced by path and SHA-256).
        string path = Path.Combine(workDirectory, "ImageLora.lora-model.zip");
        ml.Model.SaveAtomic(model, train.Schema, path);
        var lora = model.LastTransformer;
        long trainable = lora.TrainableParameterCount;
        lora.Dispose();
        return new RunResult("(b) LoraFineTuneImage: LoRA on convolutions + head", predicted, trainingTime, predictTime, trainable,
            new FileInfo(path).Length, curve, metrics.MicroAccuracy);
    }

    /// <summary>Rows with each image encoded as a PNG of its grey pixels.</summary>
    private static IEnumerable<ImageRow> Rows(LabelledImages set)
    {
        for (int i = 0; i < set.Count; i++)
        {
            yield return new ImageRow { Image = Png(set.Images[i]), Label = FashionMnist.ClassNames[set.Labels[i]] };
        }
    }

    /// <summary>A grey 28×28 image (row-major bytes) as a PNG file's bytes.</summary>
    public static byte[] Png(byte[] grey)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(FashionMnist.Side, FashionMnist.Side, SKColorType.Gray8, SKAlphaType.Opaque));
        for (int y = 0; y < FashionMnist.Side; y++)
        {
            Marshal.Copy(grey, y * FashionMnist.Side, bitmap.GetPixels() + y * bitmap.RowBytes, FashionMnist.Side);
        }

        using var encoded = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return encoded.ToArray();
    }

    /// <summary>Keeps the report at the end of each epoch (the only ones with a validation accuracy) as a curve point.</summary>
    private sealed class EpochRecorder(List<EpochPoint> curve, Action<string> log) : IProgress<LoraTrainingProgress>
    {
        public void Report(LoraTrainingProgress value)
        {
            if (value.ValidationAccuracy is not double accuracy)
            {
                return;
            }

            curve.Add(new EpochPoint(value.Epoch, value.Loss, accuracy));
            log($"  (b) epoch {value.Epoch}/{value.MaxEpochs}: training loss {value.Loss:F4}, validation loss {value.ValidationLoss:F4}, " +
                $"validation accuracy {accuracy:F4} ({value.Elapsed.TotalSeconds:F0} s so far, {1000 / value.RowsPerSecond:F1} ms/training image)");
        }
    }

    private sealed class ImageRow
    {
        public byte[] Image { get; set; } = [];

        public string Label { get; set; } = string.Empty;
    }

    private sealed class ClassName
    {
        public string Label { get; set; } = string.Empty;
    }
}
