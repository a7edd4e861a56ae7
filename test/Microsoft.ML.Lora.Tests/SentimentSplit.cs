using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// The sample's sentiment data as the deliberate MiniLM tests use it: seeded 80/20 split (603 test sentences), the label
/// mapped to a key fitted on the training part, and a short MiniLM fine-tune on its first 128 sentences (2 epochs:
/// agreement between runtimes, not quality, is what those tests check).
/// </summary>
internal sealed class SentimentSplit
{
    private SentimentSplit(MLContext ml)
    {
        var data = ml.Data.LoadFromTextFile(Path.Combine(AppContext.BaseDirectory, "TestData", "sentiment.tsv"),
            [new TextLoader.Column("Text", DataKind.String, 0), new TextLoader.Column("Label", DataKind.String, 1)],
            separatorChar: '\t', hasHeader: true, allowQuoting: false);
        var split = ml.Data.TrainTestSplit(data, testFraction: 0.2, seed: 42);
        var toKey = ml.Transforms.Conversion.MapValueToKey("Label").Fit(split.TrainSet);
        Train = toKey.Transform(split.TrainSet);
        Test = toKey.Transform(split.TestSet);
    }

    /// <summary>The training part, label as a key.</summary>
    public IDataView Train { get; }

    /// <summary>The held-out part (603 sentences), label as a key.</summary>
    public IDataView Test { get; }

    public static SentimentSplit Load(MLContext ml) => new(ml);

    /// <summary>MiniLM fine-tuned on the first 128 training sentences for 2 epochs, with <paramref name="pooling"/>.</summary>
    public LoraTransformer FitBriefly(MLContext ml, PoolingMode pooling = PoolingMode.Mean) =>
        ml.Transforms.LoraFineTune(new LoraFineTuningOptions
        {
            BaseModel = PretrainedModel.MiniLmL6V2,
            Pooling = pooling,
            BatchSize = 32,
            MaxEpochs = 2,
            LearningRate = 3e-3,
            MaxSequenceLength = 64,
        }).Fit(ml.Data.TakeRows(Train, 128));
}
