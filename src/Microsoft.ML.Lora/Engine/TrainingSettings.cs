namespace Microsoft.ML.Lora.Engine;

/// <summary>What the training loop reads of an estimator's options, whatever the model family.</summary>
internal sealed record TrainingSettings(
    int BatchSize,
    int GradientAccumulationSteps,
    int MaxEpochs,
    double WarmupRatio,
    double LearningRate,
    double WeightDecay,
    bool Shuffle,
    int ShuffleBufferSize,
    bool GroupByLength,
    int ProgressInterval,
    double ClipNorm,
    int EarlyStoppingPatience,
    int InferenceBatchSize,
    string LabelColumnName,
    IProgress<LoraTrainingProgress>? Progress,
    CancellationToken CancellationToken)
{
    /// <summary>The training settings of text fine-tuning options.</summary>
    public static TrainingSettings From(LoraFineTuningOptions o) => new(
        o.BatchSize, o.GradientAccumulationSteps, o.MaxEpochs, o.WarmupRatio, o.LearningRate, o.WeightDecay, o.Shuffle,
        o.ShuffleBufferSize, o.GroupByLength, o.ProgressInterval, o.ClipNorm, o.EarlyStoppingPatience, o.InferenceBatchSize,
        o.LabelColumnName, o.Progress, o.CancellationToken);

    /// <summary>The training settings of image fine-tuning options (no length grouping: images have no length).</summary>
    public static TrainingSettings From(LoraImageFineTuningOptions o) => new(
        o.BatchSize, o.GradientAccumulationSteps, o.MaxEpochs, o.WarmupRatio, o.LearningRate, o.WeightDecay, o.Shuffle,
        o.ShuffleBufferSize, GroupByLength: false, o.ProgressInterval, o.ClipNorm, o.EarlyStoppingPatience, o.InferenceBatchSize,
        o.LabelColumnName, o.Progress, o.CancellationToken);
}
