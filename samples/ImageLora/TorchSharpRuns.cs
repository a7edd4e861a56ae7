using System.Diagnostics;
using System.IO.Compression;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Models.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace ImageLora;

/// <summary>
/// (b) and (c) on the direct TorchSharp path: the ML.NET ResNet-18 imported into TorchSharp (<see cref="ResNet.FromOnnx"/>,
/// BatchNorm frozen, global average pooling so that sizes other than 224 work), then
/// (b) LoRA on every 3×3/7×7 convolution (<c>conv1</c>, <c>conv2</c> of each block and the stem; not the 1×1 shortcuts)
/// and a trainable linear head, trained together, or
/// (c) the same network without adapters and only a linear head, trained on its frozen features.
/// </summary>
internal static class TorchSharpRuns
{
    private const int PredictBatch = 128;

    /// <summary>Gradient clipping of (b): the base's activations are large (0–255 inputs, no scaling), and so are early gradients.</summary>
    private const double MaxGradientNorm = 1.0;

    /// <summary>(b): LoRA on the convolutions + head, trained end to end through the network.</summary>
    public static RunResult Lora(RunSettings settings, SampleData data, ImageNormalization normalization, string workDirectory, Action<string> log)
    {
        var images = new ImageTensors(normalization, settings.Size);
        torch.manual_seed(settings.Seed);
        var watch = Stopwatch.StartNew();
        using var model = ResNet.FromOnnx(settings.ResNetPath, numClasses: FashionMnist.ClassNames.Length);
        var config = new LoraConfig
        {
            r = settings.Rank,
            lora_alpha = settings.Alpha,
            target_modules_regex = settings.TargetModules,
            modules_to_save = ["fc"],
        };
        lora.inject_adapter_in_model(config, model);
        var parameters = model.parameters().Where(p => p.requires_grad).ToList();
        long trainable = parameters.Sum(p => p.numel());
        using var optimizer = optim.AdamW(parameters, lr: settings.LearningRate, weight_decay: 0);
        var curve = new List<EpochPoint>();
        var evaluationTime = TimeSpan.Zero;
        var schedule = new LearningRateSchedule(settings.LearningRate, settings.Epochs * StepsPerEpoch(data.Train.Count, settings.BatchSize));
        var random = new Random(settings.Seed);
        int[] order = [.. Enumerable.Range(0, data.Train.Count)];
        for (int epoch = 1; epoch <= settings.Epochs; epoch++)
        {
            var epochCpu = Environment.CpuUsage.TotalTime;
            var epochWatch = Stopwatch.StartNew();
            model.train();
            random.Shuffle(order);
            double lossSum = 0;
            foreach (var rows in order.Chunk(settings.BatchSize))
            {
                using var scope = NewDisposeScope();
                optimizer.ParamGroups.First().LearningRate = schedule.Next();
                optimizer.zero_grad();
                var loss = nn.functional.cross_entropy(model.call(images.Batch(data.Train, rows)), ImageTensors.Labels(data.Train, rows));
                loss.backward();
                nn.utils.clip_grad_norm_(parameters, MaxGradientNorm);
                optimizer.step();
                lossSum += loss.item<float>() * rows.Length;
            }

            double epochSeconds = epochWatch.Elapsed.TotalSeconds, epochCpuSeconds = (Environment.CpuUsage.TotalTime - epochCpu).TotalSeconds;
            var evaluation = Stopwatch.StartNew();
            model.eval();
            double validation = Metrics.Accuracy(data.Validation.Labels, Predict(model, data.Validation, images));
            evaluationTime += evaluation.Elapsed;
            curve.Add(new EpochPoint(epoch, lossSum / data.Train.Count, validation));
            log($"  (b) epoch {epoch}/{settings.Epochs}: training loss {lossSum / data.Train.Count:F4}, validation accuracy {validation:F4} (training {epochSeconds:F1} s, {1000 * epochSeconds / data.Train.Count:F1} ms/image; process CPU {1000 * epochCpuSeconds / data.Train.Count:F1} ms/image)");
        }

        var trainingTime = watch.Elapsed - evaluationTime;
        var predictWatch = Stopwatch.StartNew();
        model.eval();
        int[] predicted = Predict(model, data.Test, images);
        var predictTime = predictWatch.Elapsed;

        // What must be stored beside the base: the PEFT adapter (LoRA factors of the convolutions + the head), zipped.
        string adapterDirectory = PeftAdapter.Save(model, Path.Combine(workDirectory, "lora-adapter"));
        long zipBytes = Zip(adapterDirectory, Path.Combine(workDirectory, "ImageLora.lora-adapter.zip"));
        return new RunResult("(b) LoRA on the convolutions + head", predicted, trainingTime, predictTime, trainable, zipBytes, curve);
    }

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

    private static int[] Predict(ResNet model, LabelledImages set, ImageTensors images)
    {
        var predicted = new List<int>(set.Count);
        using var noGrad = no_grad();
        foreach (var rows in Enumerable.Range(0, set.Count).Chunk(PredictBatch))
        {
            using var scope = NewDisposeScope();
            predicted.AddRange(model.call(images.Batch(set, rows)).argmax(1).data<long>().Select(v => (int)v));
        }

        return [.. predicted];
    }

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
