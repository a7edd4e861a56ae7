namespace Microsoft.ML.Lora;

/// <summary>A progress report of <see cref="LoraFineTuningEstimator.Fit"/>, sent to <see cref="LoraFineTuningOptions.Progress"/>.</summary>
/// <param name="Epoch">Current epoch, 1-based.</param>
/// <param name="MaxEpochs">Number of epochs planned.</param>
/// <param name="Step">Optimizer steps done so far (over all epochs).</param>
/// <param name="TotalSteps">Optimizer steps planned (over all epochs).</param>
/// <param name="Loss">Mean training loss over the rows since the previous report.</param>
/// <param name="LearningRate">Learning rate of the last step.</param>
/// <param name="RowsPerSecond">Training throughput since training started.</param>
/// <param name="Elapsed">Time since training started.</param>
/// <param name="EstimatedRemaining">Estimated time to finish the planned steps.</param>
/// <param name="ValidationLoss">Validation loss of the epoch just finished, when a validation set is given and the epoch ended; otherwise null.</param>
/// <param name="ValidationAccuracy">
/// Fraction (0 to 1) of validation rows whose predicted class is their label, measured in the same pass as
/// <paramref name="ValidationLoss"/> (predicted as <see cref="LoraTransformer"/> predicts: the class with the highest score; for a
/// binary task, positive when the logit is above 0); null for regression, without a validation set, and before the epoch ended.
/// </param>
public sealed record LoraTrainingProgress(
    int Epoch,
    int MaxEpochs,
    long Step,
    long TotalSteps,
    double Loss,
    double LearningRate,
    double RowsPerSecond,
    TimeSpan Elapsed,
    TimeSpan EstimatedRemaining,
    double? ValidationLoss,
    double? ValidationAccuracy);
