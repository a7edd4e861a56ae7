using Microsoft.ML.Lora.Models.Vision;

namespace ImageLora;

/// <summary>The choices of one run of the sample (command-line options, defaults chosen to fit 10 minutes on 2 cores).</summary>
internal sealed record RunSettings
{
    /// <summary>Training images (the first ones of the committed seeded shuffle, after the validation images).</summary>
    public int TrainCount { get; init; } = 3000;

    /// <summary>Validation images (the first ones of the seeded shuffle): the per-epoch curves of (b) and (c).</summary>
    public int ValidationCount { get; init; } = 500;

    /// <summary>Test images (the first ones of the official test set): every reported accuracy.</summary>
    public int TestCount { get; init; } = 1000;

    /// <summary>Input side of the TorchSharp network for (b) and (c); (a) always runs at 224 (the ONNX graph's only size).</summary>
    public int Size { get; init; } = 56;

    /// <summary>Epochs of (b).</summary>
    public int Epochs { get; init; } = 5;

    /// <summary>Regex of the convolutions (b) adapts (default: the stem and every 3×3 convolution of the blocks, not the 1×1 shortcuts).</summary>
    public string TargetModules { get; init; } = @"conv1|layer\d\.\d+\.conv[12]";

    /// <summary>Torch threads (0: TorchSharp's default, one per core).</summary>
    public int Threads { get; init; }

    /// <summary>LoRA rank of (b).</summary>
    public int Rank { get; init; } = 8;

    /// <summary>LoRA α of (b).</summary>
    public double Alpha { get; init; } = 16;

    /// <summary>Peak learning rate of (b) (AdamW, warm-up then cosine decay).</summary>
    public double LearningRate { get; init; } = 2e-3;

    /// <summary>Epochs of (c) (cheap: on cached features).</summary>
    public int HeadEpochs { get; init; } = 30;

    /// <summary>Peak learning rate of (c).</summary>
    public double HeadLearningRate { get; init; } = 1e-3;

    /// <summary>Rows per training step of (b) and (c).</summary>
    public int BatchSize { get; init; } = 32;

    /// <summary>Seed of shuffles and initialisations.</summary>
    public int Seed { get; init; } = 42;

    /// <summary>Whether to run (a), ML.NET's recipe.</summary>
    public bool RunMlNetRecipe { get; init; } = true;

    /// <summary>The folder of the IDX .gz files (default: the committed subset next to the program).</summary>
    public string DataDirectory { get; init; } = Path.Combine(AppContext.BaseDirectory, "data");

    /// <summary>Where the model files and charts go.</summary>
    public string OutputDirectory { get; init; } = Path.Combine(Path.GetTempPath(), "ImageLora");

    /// <summary>The ResNet-18 ONNX file of the featurizer package, copied next to the program.</summary>
    public string ResNetPath { get; init; } = DnnImageModels.ResNet18Path();

    /// <summary>Its preprocessing graph (the normalisation (b) and (c) apply, read from the graph).</summary>
    public string PreprocessPath { get; init; } = DnnImageModels.ResNetPreprocessPath();
}

/// <summary>The three parts of the data: training, validation (curves only) and test (every reported number).</summary>
internal sealed record SampleData(LabelledImages Train, LabelledImages Validation, LabelledImages Test)
{
    /// <summary>
    /// Loads the data folder: its training file in the committed seeded order, split into validation (first
    /// <see cref="RunSettings.ValidationCount"/>) and training (next <see cref="RunSettings.TrainCount"/>); the first
    /// <see cref="RunSettings.TestCount"/> test images. With the full dataset's folder the training file is shuffled with
    /// the subset's seed first, so that it yields the same rows as the subset.
    /// </summary>
    public static SampleData Load(RunSettings settings)
    {
        var pool = FashionMnist.Read(settings.DataDirectory, "train");
        var test = FashionMnist.Read(settings.DataDirectory, "t10k");
        if (pool.Count == FashionMnist.FullTrainCount)
        {
            pool = pool.Select(FashionMnist.SubsetOrder(pool.Count));
        }

        int needed = settings.ValidationCount + settings.TrainCount;
        if (pool.Count < needed || test.Count < settings.TestCount)
        {
            throw new ArgumentException(
                $"{settings.DataDirectory} holds {pool.Count} training and {test.Count} test images; the settings need {needed} ({settings.ValidationCount} validation + {settings.TrainCount} training) and {settings.TestCount}. " +
                "Use --data with the full dataset's folder (data/README.md) or smaller counts.");
        }

        return new SampleData(
            pool.Select(Enumerable.Range(settings.ValidationCount, settings.TrainCount)),
            pool.Take(settings.ValidationCount),
            test.Take(settings.TestCount));
    }
}

/// <summary>One method's outcome on the test images (<see cref="EvaluatorAccuracy"/>: ML.NET's evaluator's micro-accuracy, where one ran).</summary>
internal sealed record RunResult(string Name, int[] Predicted, TimeSpan TrainingTime, TimeSpan PredictTime, long TrainableParameters,
    long ModelBytes, IReadOnlyList<EpochPoint> Curve, double? EvaluatorAccuracy = null);

/// <summary>One epoch: mean training loss and validation accuracy at its end.</summary>
internal sealed record EpochPoint(int Epoch, double TrainingLoss, double ValidationAccuracy);
