using System.Diagnostics;
using System.IO.Compression;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace ImageLora;

/// <summary>
/// (c) on the direct TorchSharp path: the ML.NET ResNet-18 imported into TorchSharp (<see cref="ResNet.FromOnnx"/>,
/// BatchNorm frozen, global average pooling so that sizes other than 224 work) without adapters, and only a linear head
/// trained on its frozen features ((b) adds LoRA on the convolutions of the same network: <see cref="MlNetLoraRun"/>).
/// </summary>
internal static class TorchSharpRuns
{
    private const int PredictBatch = 128;

    /// <summary>(c): only a linear head on the frozen features of the same network (no adapters).</summary>
    public static RunResult HeadOnly(RunSettings settings, SampleData data, ImageNormalization normalization, string workDirectory, Action<string> log)
    {
        var images = new ImageTensors(normalization, settings.Size);
        torch.manual_seed(settings.Seed);
        var watch = Stopwatch.StartNew();
        using var model = ResNet.FromOnnx(settings.ResNetPath);

        // The base is frozen (and BatchNorm uses its stored statistics), so each image's features are the same in every
        // epoch: compute them once, then train the head on them (the same result as running the frozen network each epoch).
        using var trainFeatures = Features(model, data.Train, images);
        var evaluationTime = TimeSpan.Zero;
        var featureWatch = Stopwatch.StartNew();
        using var validationFeatures = Features(model, data.Validation, images);
        evaluationTime += featureWatch.Elapsed;
        using var trainLabels = ImageTensors.Labels(data.Train, [.. Enumerable.Range(0, data.Train.Count)]);
        using var head = nn.Linear(model.FeatureSize, FashionMnist.ClassNames.Length);
        var parameters = head.parameters().ToList();
        long trainable = parameters.Sum(p => p.numel());
        using var optimizer = optim.AdamW(parameters, lr: settings.HeadLearningRate, weight_decay: 0);
        var schedule = new LearningRateSchedule(settings.HeadLearningRate, settings.HeadEpochs * StepsPerEpoch(data.Train.Count, settings.BatchSize));
        var curve = new List<EpochPoint>();
        var random = new Random(settings.Seed);
        int[] order = [.. Enumerable.Range(0, data.Train.Count)];
        for (int epoch = 1; epoch <= settings.HeadEpochs; epoch++)
        {
            random.Shuffle(order);
            double lossSum = 0;
            foreach (var rows in order.Chunk(settings.BatchSize))
            {
                using var scope = NewDisposeScope();
                optimizer.ParamGroups.First().LearningRate = schedule.Next();
                optimizer.zero_grad();
                using var index = tensor(rows.Select(r => (long)r).ToArray());
                var loss = nn.functional.cross_entropy(head.call(trainFeatures.index_select(0, index)), trainLabels.index_select(0, index));
                loss.backward();
                optimizer.step();
                lossSum += loss.item<float>() * rows.Length;
            }

            var evaluation = Stopwatch.StartNew();
            double validation = Metrics.Accuracy(data.Validation.Labels, PredictFromFeatures(head, validationFeatures));
            evaluationTime += evaluation.Elapsed;
            curve.Add(new EpochPoint(epoch, lossSum / data.Train.Count, validation));
        }

        log($"  (c) {settings.HeadEpochs} epochs: training loss {curve[^1].TrainingLoss:F4}, validation accuracy {curve[^1].ValidationAccuracy:F4} ({watch.Elapsed.TotalSeconds:F0} s)");
        var trainingTime = watch.Elapsed - evaluationTime;
        var predictWatch = Stopwatch.StartNew();
        using var testFeatures = Features(model, data.Test, images);
        int[] predicted = PredictFromFeatures(head, testFeatures);
        var predictTime = predictWatch.Elapsed;

        // What must be stored beside the base: the head alone.
        string headDirectory = Path.Combine(workDirectory, "head-only");
        Directory.CreateDirectory(headDirectory);
        head.save(Path.Combine(headDirectory, "head.dat"));
        long zipBytes = Zip(headDirectory, Path.Combine(workDirectory, "ImageLora.head-only.zip"));
        return new RunResult("(c) head only, same network", predicted, trainingTime, predictTime, trainable, zipBytes, curve);
    }

    private static int StepsPerEpoch(int rows, int batchSize) => (rows + batchSize - 1) / batchSize;

    private static Tensor Features(ResNet model, LabelledImages set, ImageTensors images)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var batches = Enumerable.Range(0, set.Count).Chunk(PredictBatch).Select(rows => model.ForwardFeatures(images.Batch(set, rows))).ToList();
        return cat(batches, 0).MoveToOuterDisposeScope();
    }

    private static int[] PredictFromFeatures(nn.Module<Tensor, Tensor> head, Tensor features)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        return [.. head.call(features).argmax(1).data<long>().Select(v => (int)v)];
    }

    private static long Zip(string directory, string zipPath)
    {
        string tmp = zipPath + ".tmp";
        File.Delete(tmp);
        ZipFile.CreateFromDirectory(directory, tmp, CompressionLevel.Optimal, includeBaseDirectory: false);
        File.Move(tmp, zipPath, overwrite: true);
        return new FileInfo(zipPath).Length;
    }

    /// <summary>Linear warm-up over the first 5 % of the steps, then cosine decay to zero.</summary>
    private sealed class LearningRateSchedule(double peak, int totalSteps)
    {
        private readonly int warmup = Math.Max(1, totalSteps / 20);
        private int step;

        public double Next()
        {
            step++;
            return step <= warmup
                ? peak * step / warmup
                : peak * 0.5 * (1 + Math.Cos(Math.PI * (step - warmup) / Math.Max(1, totalSteps - warmup)));
        }
    }
}
