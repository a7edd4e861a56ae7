using System.Diagnostics;
using ImageLora;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models.Vision;
using Microsoft.ML.OnnxRuntime;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Issue 14 (images): the ML.NET ResNet-18 imported into TorchSharp. Forward throughput at 224 against ONNX Runtime running
/// the same graph (batch fixed at 1 by the export), BatchNorm folded into the kernels against conv then BN, channels-last
/// against NCHW, forward at 112 (global pooling) against 224; a training step at 112 (fwd + bwd + AdamW) and its peak
/// memory (fresh child process each) with LoRA r=8 on every 3×3/7×7 convolution + head against full fine-tuning of all
/// convolutions + head (BatchNorm frozen in both); and images/s through the ML.NET estimator (<c>LoraFineTuneImage</c>'s
/// Fit, <c>LoraImageTransformer.Transform</c>) on the sample's committed Fashion-MNIST subset at the sample's 56 px
/// against 224 px.
/// </summary>
internal static class ImageSuite
{
    private const string ProbePrefix = "images-";

    /// <summary>Whether <paramref name="name"/> is one of this suite's memory probes (<see cref="MemoryProbe"/>).</summary>
    public static bool OwnsProbe(string name) => name.StartsWith(ProbePrefix, StringComparison.Ordinal);

    public static void Run(BenchReport report, string repoRoot, bool quick)
    {
        string modelPath = DnnImageModels.ResNet18Path();
        if (!File.Exists(modelPath))
        {
            report.Note($"images: skipped, {modelPath} not found (restore the Microsoft.ML.DnnImageFeaturizer.ResNet18 package).");
            return;
        }

        int reps = quick ? 3 : 7;
        int batch = 8;
        manual_seed(0);
        using var model = ResNet.FromOnnx(modelPath);
        using var x224 = randn(batch, 3, 224, 224).mul_(50);
        using var x112 = randn(batch, 3, 112, 112).mul_(50);

        // 1. Forward at 224: TorchSharp batch 8 (BatchNorm folded, the default) vs ONNX Runtime 8 × batch 1.
        using var session = new InferenceSession(modelPath);
        float[][] rows = Enumerable.Range(0, batch).Select(i => x224[i].contiguous().data<float>().ToArray()).ToArray();
        using var runOptions = new RunOptions();
        var (torchMs, ortMs) = Measure.Pair(
            () => Infer(model, x224),
            () =>
            {
                foreach (var row in rows)
                {
                    using var v = OrtValue.CreateTensorValueFromMemory(row, [1, 3, 224, 224]);
                    using var o = session.Run(runOptions, new Dictionary<string, OrtValue> { [session.InputNames[0]] = v }, session.OutputNames);
                }
            },
            reps);
        report.Add(new BenchRow("images", $"ResNet-18 forward 224×224, images/s (TorchSharp batch {batch}, BN folded; ORT batch 1, fixed by the export)", "images/s",
            batch * 1000 / torchMs, batch * 1000 / ortMs, "TorchSharp", "ONNX Runtime", "≥ 0.9×", torchMs <= ortMs / 0.9));

        // 2. BatchNorm folded into the kernels (the default for inference) vs conv then BN, and channels-last vs NCHW.
        using (var unfolded = ResNet.FromOnnx(modelPath))
        {
            unfolded.FoldBatchNorm = false;
            var (foldedMs, unfoldedMs) = Measure.Pair(() => Infer(model, x224), () => Infer(unfolded, x224), reps);
            report.Add(new BenchRow("images", $"ResNet-18 forward 224×224, batch {batch}: BatchNorm folded into the kernels vs conv then BN", "images/s",
                batch * 1000 / foldedMs, batch * 1000 / unfoldedMs, "folded", "conv, then BN", Note: "22 BN passes saved; the fold is computed once per eval()"));
        }

        using (var channelsLast = ResNet.FromOnnx(modelPath))
        {
            // TorchSharp 0.107 has no memory_format argument; NHWC strides come from permute → contiguous → permute back, and
            // libtorch's convolutions follow the layout of their input and kernel (elementwise ops and pooling keep it).
            ToChannelsLast(channelsLast);
            using var xLast = ChannelsLast(x224);
            var (lastMs, nchwMs) = Measure.Pair(() => Infer(channelsLast, xLast), () => Infer(model, x224), reps);
            report.Add(new BenchRow("images", $"ResNet-18 forward 224×224, batch {batch}, BN folded: channels-last (NHWC strides) vs NCHW", "images/s",
                batch * 1000 / lastMs, batch * 1000 / nchwMs, "channels-last", "NCHW", Note: "kernels and input given NHWC strides by permuting"));
        }

        // 3. Forward at 112 (global pool) vs 224, both TorchSharp.
        var (smallMs, largeMs) = Measure.Pair(() => Infer(model, x112), () => Infer(model, x224), reps);
        report.Add(new BenchRow("images", $"ResNet-18 forward images/s, batch {batch}: 112×112 vs 224×224", "images/s",
            batch * 1000 / smallMs, batch * 1000 / largeMs, "112×112", "224×224", Note: "4× fewer pixels: ideal ratio 4"));

        // 4. Training step at 112: LoRA on the convolutions + head vs full fine-tuning; then the peak memory of each.
        using (var loraStep = StepSetup.Create(modelPath, useLora: true))
        using (var fullStep = StepSetup.Create(modelPath, useLora: false))
        {
            var (loraStepMs, fullStepMs) = Measure.Pair(loraStep.Step, fullStep.Step, reps);
            report.Add(new BenchRow("images", $"ResNet-18 train step 112×112, batch {StepSetup.Batch} (fwd+bwd+AdamW, BN frozen)", "ms",
                loraStepMs, fullStepMs, $"LoRA r=8 convs + fc ({loraStep.Trainable:N0} trainable)", $"full fine-tuning convs + fc ({fullStep.Trainable:N0})",
                Note: "backward still runs through every layer; LoRA saves the kernel gradients and the optimizer update"));
        }

        double loraPeak = MemoryProbe.InChild(ProbePrefix + "lora");
        double fullPeak = MemoryProbe.InChild(ProbePrefix + "full");
        report.Add(new BenchRow("images", $"ResNet-18 train step 112×112, batch {StepSetup.Batch}: peak memory above the weights (fresh process each, 3 steps)", "MiB",
            loraPeak, fullPeak, "LoRA r=8 convs + fc", "full fine-tuning convs + fc",
            Note: "activations, gradients, AdamW state and workspace; full fine-tuning holds gradients and two AdamW moments of 15.9 M parameters"));

        // 5. Through ML.NET on the sample's data: Fit (one epoch) and Transform, at the sample's size and at 224.
        Estimator(report, repoRoot, quick);
    }

    /// <summary>Child process of <see cref="MemoryProbe"/>: 3 training steps of the LoRA or the full fine-tuning set-up.</summary>
    public static void ProbeMemory(string name)
    {
        bool useLora = name switch
        {
            ProbePrefix + "lora" => true,
            ProbePrefix + "full" => false,
            _ => throw new ArgumentException($"Unknown images memory probe '{name}' (expected {ProbePrefix}lora or {ProbePrefix}full).", nameof(name)),
        };
        using var setup = StepSetup.Create(DnnImageModels.ResNet18Path(), useLora);
        MemoryProbe.Report(setup.Step);
    }

    private static void Infer(ResNet model, Tensor x)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        model.forward(x);
    }

    /// <summary>The same values with NHWC strides (libtorch's channels-last layout of an NCHW tensor).</summary>
    private static Tensor ChannelsLast(Tensor x)
    {
        using var scope = NewDisposeScope();
        return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).MoveToOuterDisposeScope();
    }

    /// <summary>Gives every convolution kernel of <paramref name="model"/> NHWC strides (values unchanged).</summary>
    private static void ToChannelsLast(ResNet model)
    {
        using var noGrad = no_grad();
        foreach (var conv in model.modules().OfType<TorchSharp.Modules.Conv2d>())
        {
            conv.weight = new TorchSharp.Modules.Parameter(ChannelsLast(conv.weight!), requires_grad: false);
        }
    }

    private static void Estimator(BenchReport report, string repoRoot, bool quick)
    {
        string dataDirectory = Path.Combine(repoRoot, "samples", "ImageLora", "data");
        // As the sample (SampleData.Load): validation images first in the training file, training images after them.
        const int validationCount = 500;
        var pool = FashionMnist.Read(dataDirectory, "train");
        var test = FashionMnist.Read(dataDirectory, "t10k");
        int trainSmall = quick ? 32 : 512, trainLarge = quick ? 32 : 96, inferSmall = quick ? 64 : 1000, inferLarge = quick ? 32 : 256;
        var small = EstimatorRun(pool.Select(Enumerable.Range(validationCount, trainSmall)), test.Take(inferSmall), 56);
        var large = EstimatorRun(pool.Select(Enumerable.Range(validationCount, trainLarge)), test.Take(inferLarge), 224);
        report.Add(new BenchRow("images", $"LoraFineTuneImage Fit, Fashion-MNIST PNGs, 1 epoch, batch 32 ({small.TrainRows} / {large.TrainRows} images): training images/s", "images/s",
            small.TrainImagesPerSecond, large.TrainImagesPerSecond, "56×56 (the sample's size)", "224×224",
            Note: FormattableString.Invariant($"the training loop's rate (decode, resize, fwd+bwd+AdamW; LoRA r=8 on the stem and the 3×3 convs + head); whole Fit with the base import: {small.FitSeconds:F1} s / {large.FitSeconds:F1} s")));
        report.Add(new BenchRow("images", $"LoraImageTransformer.Transform, Fashion-MNIST PNGs, inference batch 128 ({small.InferRows} / {large.InferRows} images): images/s", "images/s",
            small.InferImagesPerSecond, large.InferImagesPerSecond, "56×56 (the sample's size)", "224×224",
            Note: "every Score read through the lazy view: decode, resize, normalise, forward (LoRA merged, BN folded), softmax; 16× fewer pixels at 56"));
    }

    private sealed record EstimatorResult(int TrainRows, double TrainImagesPerSecond, double FitSeconds, int InferRows, double InferImagesPerSecond);

    private static EstimatorResult EstimatorRun(LabelledImages train, LabelledImages test, int size)
    {
        var ml = new MLContext(seed: 42);
        var trainView = ml.Data.LoadFromEnumerable(Rows(train));
        var testView = ml.Data.LoadFromEnumerable(Rows(test));
        var classes = ml.Data.LoadFromEnumerable(FashionMnist.ClassNames.Select(name => new ClassName { Label = name }));
        var progress = new LastReport();
        var options = new LoraImageFineTuningOptions
        {
            ImageSize = size,
            Rank = 8,
            Alpha = 16,
            TargetModules = @"conv1|layer\d\.\d+\.conv[12]",
            MaxEpochs = 1,
            BatchSize = 32,
            ShuffleBufferSize = train.Count,
            InferenceBatchSize = 128,
            ProgressInterval = int.MaxValue,
            Progress = progress,
        };
        var pipeline = ml.Transforms.Conversion.MapValueToKey(nameof(ImageRow.Label), keyData: classes).Append(ml.Transforms.LoraFineTuneImage(options));
        var fit = Stopwatch.StartNew();
        var model = pipeline.Fit(trainView);
        double fitSeconds = fit.Elapsed.TotalSeconds;
        double trainRate = progress.Last?.RowsPerSecond ?? throw new InvalidOperationException("Fit sent no progress report.");
        try
        {
            var infer = Stopwatch.StartNew();
            int scored = model.Transform(testView).GetColumn<float[]>(options.ScoreColumnName).Count();
            double inferSeconds = infer.Elapsed.TotalSeconds;
            return new EstimatorResult(train.Count, trainRate, fitSeconds, scored, scored / inferSeconds);
        }
        finally
        {
            model.LastTransformer.Dispose();
        }
    }

    /// <summary>Rows with each grey 28×28 image encoded as a PNG (the form <c>LoadRawImageBytes</c> gives), as the sample's (b).</summary>
    private static IEnumerable<ImageRow> Rows(LabelledImages set)
    {
        for (int i = 0; i < set.Count; i++)
        {
            yield return new ImageRow { Image = Png(set.Images[i]), Label = FashionMnist.ClassNames[set.Labels[i]] };
        }
    }

    private static byte[] Png(byte[] grey)
    {
        var info = new SKImageInfo(FashionMnist.Side, FashionMnist.Side, SKColorType.Gray8, SKAlphaType.Opaque);
        using var image = SKImage.FromPixelCopy(info, grey, FashionMnist.Side);
        using var encoded = image.Encode(SKEncodedImageFormat.Png, 100);
        return encoded.ToArray();
    }

    private sealed class LastReport : IProgress<LoraTrainingProgress>
    {
        public LoraTrainingProgress? Last { get; private set; }

        public void Report(LoraTrainingProgress value) => Last = value;
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

    /// <summary>A ResNet-18 with a 10-class head, its optimizer and a fixed batch at 112: LoRA r=8 on conv1/conv2 + head, or full fine-tuning.</summary>
    private sealed class StepSetup : IDisposable
    {
        public const int Batch = 16;
        private readonly ResNet model;
        private readonly optim.Optimizer optimizer;
        private readonly Tensor images;
        private readonly Tensor labels;

        private StepSetup(ResNet model, optim.Optimizer optimizer, Tensor images, Tensor labels)
        {
            this.model = model;
            this.optimizer = optimizer;
            this.images = images;
            this.labels = labels;
        }

        public long Trainable => model.parameters().Where(p => p.requires_grad).Sum(p => p.numel());

        public static StepSetup Create(string modelPath, bool useLora)
        {
            manual_seed(1);
            var model = ResNet.FromOnnx(modelPath, numClasses: 10);
            if (useLora)
            {
                lora.inject_adapter_in_model(new LoraConfig { r = 8, lora_alpha = 16, target_modules = ["conv1", "conv2"], modules_to_save = ["fc"] }, model);
            }
            else
            {
                foreach (var (name, p) in model.named_parameters())
                {
                    p.requires_grad = !name.Contains(".bn", StringComparison.Ordinal) && !name.StartsWith("bn", StringComparison.Ordinal)
                        && !name.Contains("downsample.1", StringComparison.Ordinal);
                }
            }

            model.train();
            var optimizer = optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: useLora ? 1e-3 : 1e-4);
            manual_seed(2);
            var images = randn(Batch, 3, 112, 112).mul_(50);
            var labels = randint(0, 10, [Batch], dtype: ScalarType.Int64);
            return new StepSetup(model, optimizer, images, labels);
        }

        public void Step()
        {
            using var s = NewDisposeScope();
            optimizer.zero_grad();
            nn.functional.cross_entropy(model.forward(images), labels).backward();
            optimizer.step();
        }

        public void Dispose()
        {
            optimizer.Dispose();
            model.Dispose();
            images.Dispose();
            labels.Dispose();
        }
    }
}
